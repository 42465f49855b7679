"""The research-workflow domain: events and the ResearchWorkflow aggregate."""

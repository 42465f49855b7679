"""The write side: commands and the command bus."""

"""Reading the DOT the pages give st.graphviz_chart as Graphviz would, for the tests that check
hostile names come out of it exactly (the correlation trace, the task dependency graph)."""

from __future__ import annotations


def dot_statements(source: str, graph: str) -> list[list[str]]:
    """The statements inside `digraph <graph> { … }` as token lists, read by Graphviz's lexer rules for
    quoted strings (`\\"` and `\\\\` are escapes, a lone backslash is kept). Quoted tokens keep
    their quotes, so a broken string shows up as wrong node names, not as a silent pass."""
    tokens, i = [], 0
    while i < len(source):
        ch = source[i]
        if ch.isspace():
            i += 1
        elif ch == '"':
            j, body = i + 1, []
            while j < len(source) and source[j] != '"':
                step = 2 if source[j] == "\\" and source[j + 1 : j + 2] in ('"', "\\") else 1
                body.append(source[j : j + step])
                j += step
            assert j < len(source), "unterminated quoted string"
            tokens.append('"' + "".join(body) + '"')
            i = j + 1
        elif source.startswith("->", i):
            tokens.append("->")
            i += 2
        elif ch in "{}[];,=":
            tokens.append(ch)
            i += 1
        else:
            j = i
            while j < len(source) and not source[j].isspace() and source[j] not in '{}[];,="':
                j += 1
            tokens.append(source[i:j])
            i = j
    assert tokens[:3] == ["digraph", graph, "{"] and tokens[-1] == "}", tokens[:3]
    statements, current, depth = [], [], 0
    for token in tokens[3:-1]:
        depth += {"[": 1, "]": -1}.get(token, 0)
        if token == ";" and depth == 0:
            statements.append(current)
            current = []
        else:
            current.append(token)
    assert not current and depth == 0
    return statements

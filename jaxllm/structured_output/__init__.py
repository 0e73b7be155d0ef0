"""Structured outputs: grammars compiled with xgrammar, one matcher per constrained sequence."""

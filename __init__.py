"""divconq: divide a question into sub-questions, conquer them, and distill the divider.

Subpackages: ``divconq.graph`` (the LangGraph graph), ``divconq.nodes`` (prompts,
parsers, nodes, model loading) and ``divconq.distill`` (traces, SFT data, training,
evaluation).
"""

__version__ = "0.1.0"

"""Reports an agent can act on: parsers for tools' outputs, a classifier (code vs environment),
a renderer within a token budget, and token accounting."""

from microbuild.report.model import Failure, FailureKind, ParseResult

__all__ = ["Failure", "FailureKind", "ParseResult"]

"""The one secret scrubber: everything divconq writes to disk passes through it.

Trace stores, SFT data, evaluation results, manifests, metadata values and example ids
all go through ``scrub_text`` / ``scrub_value`` on the way out, so a credential that a
prompt, a spec or a dataset quotes is never kept. ``SECRET_FORMATS`` names every format
caught; tests plant one of each and look for it in every file written.

Every pattern runs in linear time on any input (each can start only where a run of its
characters starts, and every repeat is over one character class), so scrubbing a
megabyte of model output costs milliseconds, like the parsers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["REDACTED", "SECRET_FORMATS", "is_secret_key", "scrub_metadata", "scrub_text", "scrub_value"]

REDACTED = "[REDACTED]"

# A credential with a recognisable shape, replaced whole: (name, needles, pattern). A
# pattern runs only when one of its "|"-separated needles is in the text (lower-cased for
# the (?i) ones): most text holds none, and a substring test is far cheaper than a scan.
_TOKEN_FORMATS: list[tuple[str, str, str]] = [
    # PEM private keys, whole (body and optional END line); a body holds no "-----".
    ("PEM private key", "PRIVATE KEY", r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY-----(?:[^-]|-(?!----))*"
                        r"(?:-----END [A-Z0-9 ]{0,40}PRIVATE KEY-----)?"),
    ("Stripe key", "_live_|_test_", r"(?<![A-Za-z0-9])(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{10,}"),
    ("Stripe webhook secret", "whsec_", r"(?<![A-Za-z0-9])whsec_[A-Za-z0-9]{16,}"),
    ("LangSmith key", "lsv2_", r"(?<![A-Za-z0-9])lsv2_(?:pt|sk)_[A-Za-z0-9_]{16,}"),
    ("Hugging Face token", "hf_", r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{20,}"),
    ("GitHub token", "gh|github_pat_", r"(?<![A-Za-z0-9])(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"),
    ("GitLab token", "glpat-", r"(?<![A-Za-z0-9])glpat-[A-Za-z0-9_\-]{20,}"),
    ("Groq/Replicate/Perplexity/xAI key", "gsk|r8|pplx|xai", r"(?<![A-Za-z0-9])(?:gsk|r8|pplx|xai)[_-][A-Za-z0-9]{20,}"),
    ("Slack token", "xox", r"(?<![A-Za-z0-9])xox[abposr]-[A-Za-z0-9\-]{10,}"),
    ("Slack webhook", "hooks.slack.com", r"https://hooks\.slack\.com/services/[A-Za-z0-9/]{8,}"),
    ("Discord webhook", "/api/webhooks/", r"https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/[0-9]{5,}/[A-Za-z0-9_\-]{10,}"),
    ("AWS access key id", "AKIA|ASIA|AGPA|AIDA|AROA|ANPA", r"(?<![A-Z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[0-9A-Z]{16}(?![A-Z0-9])"),
    ("Google API key", "AIza", r"(?<![A-Za-z0-9])AIza[0-9A-Za-z_\-]{35}"),
    ("Google OAuth token", "ya29.", r"(?<![A-Za-z0-9.])ya29\.[0-9A-Za-z_\-]{20,}"),
    ("Google OAuth client secret", "GOCSPX-", r"(?<![A-Za-z0-9])GOCSPX-[0-9A-Za-z_\-]{20,}"),
    ("npm token", "npm_", r"(?<![A-Za-z0-9])npm_[A-Za-z0-9]{36}"),
    ("PyPI token", "pypi-AgE", r"(?<![A-Za-z0-9])pypi-AgE[A-Za-z0-9_\-]{50,}"),
    ("SendGrid key", "SG.", r"(?<![A-Za-z0-9.])SG\.[A-Za-z0-9_\-]{16,32}\.[A-Za-z0-9_\-]{16,64}"),
    ("Twilio key", "SK", r"(?<![A-Za-z0-9])SK[0-9a-fA-F]{32}(?![A-Za-z0-9])"),
    ("DigitalOcean token", "_v1_", r"(?<![A-Za-z0-9])do[por]_v1_[a-f0-9]{64}"),
    ("Shopify token", "shp", r"(?<![A-Za-z0-9])shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}"),
    ("Databricks token", "dapi", r"(?<![A-Za-z0-9])dapi[a-f0-9]{32}(?![A-Za-z0-9])"),
    ("Telegram bot token", ":AA", r"(?<![0-9])[0-9]{8,10}:AA[A-Za-z0-9_\-]{33}(?![A-Za-z0-9_\-])"),
    ("Mailgun key", "key-", r"(?<![A-Za-z0-9])key-[0-9a-zA-Z]{32}(?![A-Za-z0-9])"),
    ("Bearer token", "bearer", r"(?i)(?<![A-Za-z0-9])bearer\s+[A-Za-z0-9._~+/=\-]{8,}"),
    ("Basic credentials", "basic", r"(?i)(?<![A-Za-z0-9])basic\s+[A-Za-z0-9+/=]{12,}"),
]
# OpenAI (sk-, sk-proj-), Anthropic (sk-ant-): the whole run is taken at once (possessive)
# and kept when it has no digit, so "sk-learn-is-a-library" stays.
_OPENAI_KEY = re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-]{20,}+")
# A JWT: three base64url segments joined by dots, the first from an "eyJ" ('{"' encoded).
# Maximal runs are taken whole (starts only where a run starts), then split in Python,
# so a run like "eyJa-eyJa-..." is read once, not once per "eyJ".
_DOTTED_RUN = re.compile(r"(?<![A-Za-z0-9_\-.])[A-Za-z0-9_\-.]{19,}+")
# Credentials inside a URL: scheme://user:password@host keeps the scheme and the host.
_URL_CREDENTIALS = re.compile(r"(?i)(?<![A-Za-z0-9+.\-])([a-z][a-z0-9+.\-]{0,20}://)[^\s/?#@\"'<>]{0,256}:[^\s/?#@\"'<>]{1,256}@")
# A bare 40-character AWS secret access key: mixed case and digits (hex digests stay).
_AWS_SECRET = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")

# "name: value" / "name=value" / '"name": "value"': the name says the value is a credential.
# A name ends in a keyword at a word or camelCase boundary ("aws_secret_access_key",
# "accessToken", "Ocp-Apim-Subscription-Key"); "max_tokens" and "tokenizer" do not.
_BOUNDARY = r"(?:(?<![A-Za-z0-9])|(?-i:(?<=[a-z])(?=[A-Z])))"
_SEPARATOR = r"([\"']?\s*[:=]\s*[\"']?)"
_VALUE = r"(?!\[REDACTED\])[^\s\"',;&}<>]+"
_STRONG_NAMES = (
    r"passw(?:or)?d|passwd|pwd|passphrase|(?:access|auth|refresh|id|bearer|session|api|private|bot)[_\-]?token"
    r"|api[_\-]?key|apikey|access[_\-]?key(?:[_\-]?id)?|secret[_\-]?(?:access[_\-]?)?key|private[_\-]?key"
    r"|client[_\-]?secret|subscription[_\-]?key|account[_\-]?key|shared[_\-]?access[_\-]?key"
)
_STRONG_ASSIGNMENT = re.compile(rf"(?i){_BOUNDARY}({_STRONG_NAMES}){_SEPARATOR}{_VALUE}")
# Weaker names ("token", "secret", "credentials", "auth") also occur in prose ("The
# secret: Alice hid coins", "1 token = 4 quarters"), so their value must look like a
# token: 8 characters with a digit among them, or 20 characters.
_TOKENISH = r"(?=(?=[^\s\"',;&}<>]{0,200}\d)[^\s\"',;&}<>]{8}|[^\s\"',;&}<>]{20})"
_WEAK_ASSIGNMENT = re.compile(rf"(?i){_BOUNDARY}(token|secret|credentials?|auth){_SEPARATOR}{_TOKENISH}{_VALUE}")
# The signature of an Azure SAS URL ("...?sv=2022&sig=abc%2F...").
_SAS_SIGNATURE = re.compile(r"(?i)([?&]sig)(=)(?!\[REDACTED\])[^\s\"'&<>]+")
# An Authorization header, whatever its scheme ("Bearer", "Token", "Basic", none).
_AUTH_HEADER = re.compile(
    r"(?i)(?<![A-Za-z0-9])((?:proxy-)?authori[sz]ation)([\"']?\s*[:=]\s*[\"']?)(?!\[REDACTED\])(?:[A-Za-z]+\s+)?[^\s\"',;}]{6,}"
)

_TOKENS = [(tuple(needles.split("|")), pattern.startswith("(?i)"), re.compile(pattern))
           for _, needles, pattern in _TOKEN_FORMATS]
# The assignments run only when a keyword is in the lower-cased text.
_ASSIGNMENT_NEEDLES = ("pass", "pwd", "token", "key", "secret", "credential", "auth", "sig")
SECRET_FORMATS: tuple[str, ...] = ("OpenAI/Anthropic key", "JWT") + tuple(name for name, _, _ in _TOKEN_FORMATS) + (
    "credentials in a URL", "AWS secret access key", "credential-named assignment or header",
    "Authorization header",
)

# Metadata keys that name credentials. "token" only as a whole word, so "max_tokens"
# and "tokenizer" survive while "hf_token" and "accessToken" do not.
_SECRET_KEY = re.compile(
    r"api[_-]?key|authori[sz]ation|secret|passw(?:or)?d|credential|subscription[_-]?key|access[_-]?key"
    r"|private[_-]?key|(?:^|[_-])token(?:$|[_-])|^(?:x[_-])?auth$|cookie",
    re.I,
)


def _with_digit(match: re.Match[str]) -> str:
    return REDACTED if any(c.isdigit() for c in match.group(0)) else match.group(0)


def _jwt_in_run(match: re.Match[str]) -> str:
    run = match.group(0)
    segments = run.split(".")
    for i in range(len(segments) - 2):
        start = segments[i].find("eyJ")
        header = segments[i][start:] if start >= 0 else ""
        if len(header) >= 8 and len(segments[i + 1]) >= 5 and segments[i + 1].startswith("eyJ"):
            head = ".".join(segments[:i] + [segments[i][:start]])
            rest = ".".join(segments[i + 3:])
            return head + REDACTED + ("." + rest if rest else "")
    return run


def _mixed(match: re.Match[str]) -> str:
    text = match.group(0)
    looks_random = any(c.isupper() for c in text) and any(c.islower() for c in text) and any(c.isdigit() for c in text)
    return REDACTED if looks_random else text


def _keep_name(match: re.Match[str]) -> str:
    return match.group(1) + match.group(2) + REDACTED


def scrub_text(text: str) -> str:
    """``text`` with anything that looks like a credential replaced by ``[REDACTED]``."""
    if not text or not isinstance(text, str):
        return text
    lowered = text.lower()
    for needles, folded, pattern in _TOKENS:
        haystack = lowered if folded else text
        if any(needle in haystack for needle in needles):
            text = pattern.sub(REDACTED, text)
    if "sk-" in text:
        text = _OPENAI_KEY.sub(_with_digit, text)
    if "eyJ" in text:
        text = _DOTTED_RUN.sub(_jwt_in_run, text)
    if "://" in text and "@" in text:
        text = _URL_CREDENTIALS.sub(lambda m: m.group(1) + REDACTED + "@", text)
    text = _AWS_SECRET.sub(_mixed, text)
    if any(needle in lowered for needle in _ASSIGNMENT_NEEDLES):
        for pattern in (_AUTH_HEADER, _STRONG_ASSIGNMENT, _WEAK_ASSIGNMENT, _SAS_SIGNATURE):
            text = pattern.sub(_keep_name, text)
    return text


def is_secret_key(key: Any) -> bool:
    """Whether a mapping key names a credential (its value is then dropped)."""
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", str(key))  # accessToken -> access_Token
    return bool(_SECRET_KEY.search(snake))


def scrub_value(value: Any) -> Any:
    """Strings scrubbed, mappings through ``scrub_metadata``, sequences element by element."""
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Mapping):
        return scrub_metadata(value)
    if isinstance(value, (list, tuple)):
        return [scrub_value(v) for v in value]
    return value


def scrub_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """A copy without credential-named keys (at any depth), with key-like values redacted."""
    return {scrub_text(str(k)): scrub_value(v) for k, v in metadata.items() if not is_secret_key(k)}

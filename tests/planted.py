"""Planted secrets and personal data for the redaction tests: realistic shapes, generated deterministically.

Each item is (kind, value, sentence). The values are made up (random characters of the right shape; card
numbers get a valid Luhn digit, phone numbers use the 555 / 7946 fiction ranges) and match no real account.
"""

from __future__ import annotations

import base64
import json
import random
import string

from swarm_edge.redact import luhn_ok

_rng = random.Random(20261128)
AN = string.ascii_letters + string.digits


def _s(n: int, alphabet: str = AN) -> str:
    return "".join(_rng.choice(alphabet) for _ in range(n))


def _b64url(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


def _card(prefix: str, length: int) -> str:
    while True:
        body = prefix + _s(length - len(prefix) - 1, string.digits)
        for d in string.digits:
            if luhn_ok(body + d):
                return body + d


def _grouped(number: str) -> str:
    return " ".join(number[i:i + 4] for i in range(0, len(number), 4))


def _items() -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []

    def add(kind: str, value: str, template: str) -> None:
        out.append((kind, value, template.format(v=value)))

    for _ in range(7):
        add("OPENAI_KEY", "sk-proj-" + _s(48, AN + "_-"), "My OpenAI key is {v}, why does it fail?")
    for _ in range(3):
        add("OPENAI_KEY", "sk-" + _s(48), "export OPENAI_API_KEY={v}")
    for _ in range(7):
        add("ANTHROPIC_KEY", "sk-ant-api03-" + _s(80, AN + "_-"), "client = Anthropic(api_key=\"{v}\")")
    for _ in range(7):
        add("GITHUB_TOKEN", "ghp_" + _s(36), "git clone https://github.com/acme/app.git  # token {v}")
    for _ in range(3):
        add("GITHUB_TOKEN", "github_pat_" + _s(82, AN + "_"), "GH_TOKEN={v} gh pr list")
    for _ in range(6):
        add("AWS_KEY", "AKIA" + _s(16, string.ascii_uppercase + string.digits), "aws_access_key_id = {v}")
    for _ in range(6):
        add("AWS_SECRET", _s(40, AN + "/+"), "aws_secret_access_key = {v}")
    for _ in range(6):
        add("STRIPE_KEY", _rng.choice(["sk_live_", "sk_test_", "rk_live_"]) + _s(24), "stripe.api_key = '{v}'")
    for _ in range(5):
        add("SLACK_TOKEN", f"xoxb-{_s(12, string.digits)}-{_s(13, string.digits)}-{_s(24)}",
            "SLACK_BOT_TOKEN={v} python bot.py")
    for _ in range(5):
        add("GOOGLE_KEY", "AIza" + _s(35, AN + "_-"), "maps.googleapis.com/maps/api/js?key={v}")
    for _ in range(5):
        add("HF_TOKEN", "hf_" + _s(34), "huggingface-cli login --token {v}")
    for _ in range(6):
        jwt = ".".join([_b64url({"alg": "HS256", "typ": "JWT"}),
                        _b64url({"sub": _s(8, string.digits), "name": "Jane", "iat": 1516239022}), _s(43, AN + "_-")])
        add("JWT", jwt, "Authorization: Bearer {v}")
    for _ in range(4):
        body = "\n".join(_s(64, AN + "+/") for _ in range(5))
        add("PRIVATE_KEY", f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----",
            "Is this key file valid?\n{v}\nThanks")
    for _ in range(2):
        body = "\n".join(_s(70, AN + "+/") for _ in range(3))
        add("PRIVATE_KEY", f"-----BEGIN OPENSSH PRIVATE KEY-----\n{body}\n-----END OPENSSH PRIVATE KEY-----",
            "my ~/.ssh/id_ed25519:\n{v}")
    for _ in range(7):
        add("URL_PASSWORD", _s(14, AN + "!*"), "DATABASE_URL=postgres://admin:{v}@db.internal:5432/prod")
    names = ["jane.doe", "bob", "k.schmidt", "ana-maria", "li_wei", "o.connor", "sam+news", "dev.team"]
    domains = ["example.com", "mail.example.org", "acme.co.uk", "uni-bonn.de", "corp.example.net"]
    for name in names:
        add("EMAIL", f"{name}@{_rng.choice(domains)}", "Please email {v} the report by Friday.")
    for prefix, length in [("4", 16), ("51", 16), ("37", 15), ("6011", 16), ("4", 16), ("35", 16), ("55", 16)]:
        number = _card(prefix, length)
        add("CARD", _grouped(number) if _rng.random() < 0.5 else number, "Charge my card {v}, exp 04/29.")
    phones = ["+1 415 555 0134", "(415) 555-0199", "415-555-0123", "+44 20 7946 0321", "020 7946 0958",
              "+49 30 901820", "415.555.0172", "+33 1 70 36 39 85"]
    for p in phones:
        add("PHONE", p, "Call me at {v} tomorrow.")
    _hardening(add)
    return out


def _pem_body(lines: int, width: int = 64) -> str:
    return "\n".join(_s(width, AN + "+/") for _ in range(lines)) + "\n" + _s(20, AN + "+/") + "=="


def _hardening(add) -> None:
    """Shapes the first version missed (appended, so the items above keep their values)."""
    for _ in range(2):
        add("PRIVATE_KEY", "-----BEGIN PGP PRIVATE KEY BLOCK-----\nVersion: GnuPG v2\nComment: work laptop\n\n"
            f"{_pem_body(6)}\n={_s(4, AN + '+/')}\n-----END PGP PRIVATE KEY BLOCK-----", "my gpg export:\n{v}\nok?")
    for _ in range(2):  # pasted without its END line: redacted to the end of the base64 body
        add("PRIVATE_KEY", f"-----BEGIN PRIVATE KEY-----\n{_pem_body(5)}", "{v}\n\nwhy does openssl call it truncated?")
    add("PRIVATE_KEY", "-----BEGIN EC PRIVATE KEY-----\\n" + _pem_body(2).replace("\n", "\\n")
        + "\\n-----END EC PRIVATE KEY-----\\n", '{{"type": "service_account", "private_key": "{v}"}}')
    for _ in range(2):
        add("AWS_SECRET", _s(40, AN + "/+"), '{{"aws_secret_access_key": "{v}", "region": "eu-west-1"}}')
        add("AWS_SECRET", _s(40, AN + "/+"), '"Credentials": {{"SecretAccessKey": "{v}", "Expiration": "2026-12-01"}}')
    add("AWS_SECRET", "IQoJb3JpZ2luX2Vj" + _s(300, AN + "/+"), "aws_session_token = {v}")
    for _ in range(3):
        add("AUTH_HEADER", _s(40, AN + "-._~"), 'curl -H "Authorization: Bearer {v}" https://api.example.com/v1/items')
    add("AUTH_HEADER", base64.b64encode(f"admin:{_s(12)}".encode()).decode(), "Authorization: Basic {v}")
    add("AUTH_HEADER", _s(32, string.hexdigits.lower()), "requests.get(url, headers={{'x-api-key': '{v}'}})")
    add("AUTH_HEADER", "ya29." + _s(60, AN + "-_"), "then send Bearer {v} with each call")
    for _ in range(3):
        add("SLACK_WEBHOOK", f"T{_s(8, string.ascii_uppercase + string.digits)}/B{_s(10, string.ascii_uppercase)}/"
            + _s(24), "SLACK_WEBHOOK_URL=https://hooks.slack.com/services/{v}")
    for _ in range(2):
        add("AZURE_KEY", _s(86, AN + "+/") + "==", "DefaultEndpointsProtocol=https;AccountName=acmeprod;"
            "AccountKey={v};EndpointSuffix=core.windows.net")
    add("AZURE_KEY", _s(43, AN + "+/") + "=", "Endpoint=sb://acme.servicebus.windows.net/;"
        "SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey={v}")
    # glued to a word (no word boundary before the key)
    add("OPENAI_KEY", "sk-proj-" + _s(48, AN + "_-"), "OPENAI_API_KEY=mykey_{v}")
    add("GITHUB_TOKEN", "ghp_" + _s(36), "fetch('https://api.example.com/items?token={v}')")
    add("GITHUB_TOKEN", "ghp_" + _s(36), "CI_SECRET=auth_{v}")
    add("HF_TOKEN", "hf_" + _s(34), "HF=my_{v}")
    # zero-width and other invisible characters inside a key or an address (kept in the restored value)
    keys = [("ANTHROPIC_KEY", "sk-ant-api03-" + _s(60)), ("OPENAI_KEY", "sk-proj-" + _s(48)),
            ("GITHUB_TOKEN", "ghp_" + _s(36)), ("AWS_KEY", "AKIA" + _s(16, string.ascii_uppercase + string.digits)),
            ("STRIPE_KEY", "sk_live_" + _s(24))]
    for i, ((kind, key), mark) in enumerate(zip(keys, ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff"],
                                                strict=True)):
        add(kind, key[:6 + i] + mark + key[6 + i:], "here it is: {v} (copied from the dashboard)")
    add("EMAIL", "jane\u200b.doe@exam\u200dple.com", "write to {v} please")


ITEMS = _items()

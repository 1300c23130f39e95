"""auth0-python as a customer of en-auth-proxy: GetToken(...).client_credentials(audience).

Reads its settings from the environment (the secret never appears in argv):
  AUTH0_DOMAIN      host:port of the proxy (what a customer would set as the Auth0 domain)
  AUTH0_PROTOCOL    "http" on loopback (GetToken's own `protocol` argument), default "https"
  AUTH0_CLIENT_ID, AUTH0_CLIENT_SECRET, AUTH0_AUDIENCE
  REQUESTS          how many tokens to ask for, one after the other (default 1)

Prints one JSON line per request: the token answer, or the SDK's exception and what it
exposes (status_code, error_code, message, and reset_at for a RateLimitError).
"""

import json
import os
import sys

from auth0.authentication import GetToken
from auth0.authentication.exceptions import Auth0Error, RateLimitError


def main() -> int:
    get_token = GetToken(
        os.environ["AUTH0_DOMAIN"],
        os.environ["AUTH0_CLIENT_ID"],
        client_secret=os.environ["AUTH0_CLIENT_SECRET"],
        protocol=os.environ.get("AUTH0_PROTOCOL", "https"),
        timeout=30.0,
    )
    for _ in range(int(os.environ.get("REQUESTS", "1"))):
        try:
            answer = get_token.client_credentials(os.environ["AUTH0_AUDIENCE"])
            print(json.dumps({"ok": True, "answer": answer}), flush=True)
        except RateLimitError as err:
            print(
                json.dumps(
                    {
                        "ok": False,
                        "type": "RateLimitError",
                        "status_code": err.status_code,
                        "error_code": err.error_code,
                        "message": err.message,
                        "reset_at": err.reset_at,
                    }
                ),
                flush=True,
            )
        except Auth0Error as err:
            print(
                json.dumps(
                    {
                        "ok": False,
                        "type": type(err).__name__,
                        "status_code": err.status_code,
                        "error_code": err.error_code,
                        "message": err.message,
                    }
                ),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

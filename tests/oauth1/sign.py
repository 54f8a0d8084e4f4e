"""Signs one request with OAuth 1.0a (two-legged) using oauthlib, and prints the value of
the Authorization header on stdout.

The gateway's tests use it so that signatures come from a client implementation nobody on
this project wrote. The consumer secret is read from the OAUTH1_CONSUMER_SECRET environment
variable, never from the command line; the request body, if any, from stdin.

oauthlib adds oauth_body_hash (the OAuth Request Body Hash draft) to requests whose body is
not form-encoded, and it always uses SHA-1 for it, whatever the signature method.

    sign.py --method POST --url http://host/path?q=1 --content-type application/json \
        --key consumer --signature-method HMAC-SHA256 [--timestamp T] [--nonce N] < body
"""

import argparse
import os
import sys

from oauthlib.oauth1 import SIGNATURE_TYPE_AUTH_HEADER, Client


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True, help="the consumer key")
    parser.add_argument(
        "--signature-method", default="HMAC-SHA1", choices=["HMAC-SHA1", "HMAC-SHA256"]
    )
    parser.add_argument("--content-type", help="Content-Type of the body on stdin")
    parser.add_argument("--body", action="store_true", help="read a body from stdin")
    parser.add_argument("--timestamp", help="instead of now, for stale-timestamp tests")
    parser.add_argument("--nonce", help="instead of a random one, for replay tests")
    args = parser.parse_args()

    secret = os.environ.get("OAUTH1_CONSUMER_SECRET")
    if not secret:
        print("set OAUTH1_CONSUMER_SECRET", file=sys.stderr)
        return 2
    body = sys.stdin.buffer.read().decode("utf-8") if args.body else None
    headers = {"Content-Type": args.content_type} if args.content_type else {}

    client = Client(
        args.key,
        client_secret=secret,
        signature_method=args.signature_method,
        signature_type=SIGNATURE_TYPE_AUTH_HEADER,
        timestamp=args.timestamp,
        nonce=args.nonce,
    )
    _, signed, _ = client.sign(args.url, http_method=args.method, body=body, headers=headers)
    print(signed["Authorization"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Mints a turnd REST credential in Python (standard library only).

python3 mint.py SECRET USER TTL_SECONDS prints
{"username": "<expiry>:<user>", "credential": "base64(HMAC-SHA1(secret, username))"}.
"""
import base64
import hashlib
import hmac
import json
import sys
import time


def turn_credential(secret: str, user: str, ttl: int) -> dict:
    username = f"{int(time.time()) + ttl}:{user}"
    mac = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return {"username": username, "credential": base64.b64encode(mac).decode()}


if __name__ == "__main__":
    secret, user, ttl = sys.argv[1], sys.argv[2], int(sys.argv[3])
    print(json.dumps(turn_credential(secret, user, ttl)))

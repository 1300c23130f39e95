"""Known-answer vectors for Cognito SRP, computed by pycognito (the official Python client).

    tests/peers/.venv/bin/python tests/peers/srp_vectors.py > en-auth-srp/tests/vectors/pycognito.json

Each vector fixes a, the server's B and salt, the secret block and the clock, and records what
pycognito computes: A, u, x, S, the HKDF key and the PASSWORD_CLAIM_SIGNATURE (plus the
SECRET_HASH). The vectors are chosen so that padding edge cases occur: A, u, S and salt with
and without the top bit set, and salts with an odd number of hex digits.
"""
import base64
import datetime
import json
import random
import sys

import pycognito.aws_srp as srp

rng = random.Random(20261123)
N = srp.hex_to_long(srp.N_HEX)


def top_bit(value):
    return srp.long_to_hex(value)[0] in "89abcdef" and len(srp.long_to_hex(value)) % 2 == 0


class FixedClock(datetime.datetime):
    fixed = None

    @classmethod
    def utcnow(cls):
        return cls.fixed


def vector(i):
    pool_id = "us-east-1_" + "".join(rng.choice("ABCDEFGHabcdefgh0123456789") for _ in range(9))
    user_id = f"user-{i}-" + "".join(rng.choice("abcdef0123456789") for _ in range(8))
    password = rng.choice(["Correct-Horse-9", "pässwörd-ß-€1", "P@55w0rd!" * 3, "short1A!"])
    a = rng.getrandbits(1024)
    big_b = rng.randrange(2, N)
    salt_bits = rng.choice([124, 127, 128, 125])
    salt = srp.long_to_hex(rng.getrandbits(salt_bits) | (1 << (salt_bits - 1)))
    secret_block = base64.standard_b64encode(rng.randbytes(rng.choice([64, 96, 127]))).decode()
    at = datetime.datetime(2025, rng.randint(1, 12), rng.randint(1, 28), rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59))

    client = srp.AWSSRP(user_id, password, pool_id, "client-id-1", client=object(), client_secret="client-secret-1")
    client.small_a_value = a
    client.large_a_value = client.calculate_a()
    FixedClock.fixed = at
    srp.datetime.datetime = FixedClock
    response = client.process_challenge(
        {"USER_ID_FOR_SRP": user_id, "SALT": salt, "SRP_B": srp.long_to_hex(big_b), "SECRET_BLOCK": secret_block, "USERNAME": user_id},
        {"USERNAME": user_id},
    )
    u = srp.calculate_u(client.large_a_value, big_b)
    x = srp.hex_to_long(srp.hex_hash(srp.pad_hex(salt) + srp.hash_sha256(f"{pool_id.split('_')[1]}{user_id}:{password}".encode())))
    s = pow(big_b - client.val_k * pow(client.val_g, x, N), a + u * x, N)
    key = client.get_password_authentication_key(user_id, password, big_b, salt)
    return {
        "pool_id": pool_id, "user_id": user_id, "password": password, "client_id": "client-id-1",
        "client_secret": "client-secret-1", "a": srp.long_to_hex(a), "A": srp.long_to_hex(client.large_a_value),
        "B": srp.long_to_hex(big_b), "salt": salt, "secret_block": secret_block,
        "timestamp": response["TIMESTAMP"], "u": srp.long_to_hex(u), "x": srp.long_to_hex(x),
        "S": srp.long_to_hex(s), "key": key.hex(), "signature": response["PASSWORD_CLAIM_SIGNATURE"],
        "secret_hash": response["SECRET_HASH"],
    }


def main():
    wanted = {(name, flag) for name in ("A", "u", "S", "salt") for flag in (True, False)} | {("odd_salt", True)}
    vectors, seen = [], set()
    i = 0
    while len(vectors) < 24 or not wanted <= seen:
        v = vector(i)
        i += 1
        tags = {(name, top_bit(int(v[name], 16))) for name in ("A", "u", "S", "salt")}
        if len(v["salt"]) % 2 == 1:
            tags.add(("odd_salt", True))
        if len(vectors) < 24 or not tags <= seen:
            vectors.append(v)
            seen |= tags
    json.dump({"generator": "pycognito 2024.5.1", "vectors": vectors}, sys.stdout, indent=1)
    print()


main()

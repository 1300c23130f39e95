"""Reference timings for the SRP benchmark, on this machine: pycognito's login maths, and the
same three modular exponentiations with Python ints and (when installed) GMP through gmpy2.

    tests/peers/.venv/bin/python tests/peers/srp_reference_timing.py
"""
import json
import pathlib
import time

import pycognito.aws_srp as srp

v = json.loads((pathlib.Path(__file__).parents[2] / "en-auth-srp/tests/vectors/pycognito.json").read_text())["vectors"][0]
a, B, N = int(v["a"], 16), int(v["B"], 16), srp.hex_to_long(srp.N_HEX)
x, u = int(v["x"], 16), int(v["u"], 16)
k = srp.hex_to_long(srp.hex_hash("00" + srp.N_HEX + "0" + srp.G_HEX))


def timed(fn, n=20):
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e3


def pycognito_login():
    client = srp.AWSSRP("user-1", "Correct-Horse-9", "us-east-1_PoolName1", "c", client=object())
    client.small_a_value = a
    client.large_a_value = client.calculate_a()
    client.get_password_authentication_key("user-1", "Correct-Horse-9", B, v["salt"])


def modpows(pw, a, B, N, x, u, k):
    pw(2, a, N)
    gx = pw(2, x, N)
    pw((B - k * gx) % N, a + u * x, N)


print(f"pycognito login maths: {timed(pycognito_login):.2f} ms")
print(f"python int modpows:    {timed(lambda: modpows(pow, a, B, N, x, u, k)):.2f} ms")
try:
    import gmpy2
    g = [gmpy2.mpz(t) for t in (a, B, N, x, u, k)]
    print(f"GMP (gmpy2) modpows:   {timed(lambda: modpows(gmpy2.powmod, *g), 50):.2f} ms")
except ImportError:
    print("GMP (gmpy2) modpows:   gmpy2 not installed")

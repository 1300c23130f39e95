// node-auth0 as a customer of en-auth-proxy:
// new AuthenticationClient({ domain, clientId, clientSecret }).oauth.clientCredentialsGrant({ audience }).
//
// Settings from the environment (the secret never appears in argv):
//   AUTH0_DOMAIN   host:port of the proxy. node-auth0 always speaks https to `https://${domain}`:
//                  the proxy is served over TLS on loopback, its CA given in NODE_EXTRA_CA_CERTS.
//   AUTH0_CLIENT_ID, AUTH0_CLIENT_SECRET, AUTH0_AUDIENCE
//   REQUESTS       how many tokens to ask for, one after the other (default 1)
//
// Prints one JSON line per request: the token answer, or the SDK's error and what it exposes
// (statusCode, error, error_description, and the rate-limit headers of a 429).
import { AuthenticationClient } from 'auth0';

const auth0 = new AuthenticationClient({
  domain: process.env.AUTH0_DOMAIN,
  clientId: process.env.AUTH0_CLIENT_ID,
  clientSecret: process.env.AUTH0_CLIENT_SECRET,
});

const requests = Number(process.env.REQUESTS ?? '1');
for (let i = 0; i < requests; i += 1) {
  try {
    const { data } = await auth0.oauth.clientCredentialsGrant({ audience: process.env.AUTH0_AUDIENCE });
    console.log(JSON.stringify({ ok: true, answer: data }));
  } catch (err) {
    const header = (name) => (err.headers && typeof err.headers.get === 'function' ? err.headers.get(name) : null);
    console.log(JSON.stringify({
      ok: false,
      type: err.name ?? err.constructor?.name,
      statusCode: err.statusCode ?? null,
      error: err.error ?? null,
      error_description: err.error_description ?? null,
      message: err.message,
      retryAfter: header('retry-after'),
      rateLimitLimit: header('x-ratelimit-limit'),
      rateLimitRemaining: header('x-ratelimit-remaining'),
      rateLimitReset: header('x-ratelimit-reset'),
    }));
  }
}

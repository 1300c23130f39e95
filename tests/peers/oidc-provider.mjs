// panva's oidc-provider, configured for en-auth's integration tests.
//
//   node oidc-provider.mjs [--ttl SECONDS]
//
// Listens on 127.0.0.1 on a free port and prints `READY <port>` once it accepts requests.
// - Clients (client-credentials grant only):
//     basic-client / basic-secret   client_secret_basic, scopes read:data write:data (admin:all refused)
//     post-client  / post-secret    client_secret_post,  scopes read:data write:data
//     customer-1 … customer-50 / customer-N-secret   client_secret_post, scopes read:data write:data
//                                  (the token proxy's simulated customers)
//     dpop-client / dpop-secret     client_secret_basic, DPoP-bound tokens (RFC 9449)
//     dpop-nonce-client / dpop-nonce-secret   the same, and the token endpoint requires a DPoP nonce
// - Resource indicators (RFC 8707) with JWT access tokens (RS256) for
//   https://api.example.com and https://orders.example.com; any other resource is
//   invalid_target. Auth0's `audience` parameter is accepted as an alias of `resource`.
// - Test hooks, outside the OAuth2 surface:
//     GET  /__stats   {"tokens_issued": n, "token_requests": n}
//     POST /__rotate  switch to a second signing key (new kid), as a key rotation would
import http from 'node:http';
import crypto from 'node:crypto';
import Provider, { errors } from 'oidc-provider';

const args = process.argv.slice(2);
const ttlIndex = args.indexOf('--ttl');
const ttl = ttlIndex >= 0 ? Number(args[ttlIndex + 1]) : 3600;

const RESOURCES = new Set(['https://api.example.com', 'https://orders.example.com']);
let tokensIssued = 0;
let tokenRequests = 0;

function signingKey(kid) {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
}

const CUSTOMERS = Array.from({ length: 50 }, (_, i) => ({
  client_id: `customer-${i + 1}`,
  client_secret: `customer-${i + 1}-secret`,
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
  token_endpoint_auth_method: 'client_secret_post',
  scope: 'read:data write:data',
}));

// --- DPoP (RFC 9449) ---
const DPOP_CLIENTS = ['dpop-client', 'dpop-nonce-client'].map((id) => ({
  client_id: id,
  client_secret: id.replace('-client', '-secret'),
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
  token_endpoint_auth_method: 'client_secret_basic',
  scope: 'read:data write:data',
  dpop_bound_access_tokens: true,
}));
const DPOP_NONCE_SECRET = crypto.randomBytes(32);
const dPoP = {
  enabled: true,
  nonceSecret: DPOP_NONCE_SECRET,
  requireNonce: (ctx) => ctx.oidc?.client?.clientId === 'dpop-nonce-client',
};
// --- end DPoP ---

function makeProvider(issuer, key) {
  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: 'basic-client',
        client_secret: 'basic-secret',
        grant_types: ['client_credentials'],
        redirect_uris: [],
        response_types: [],
        token_endpoint_auth_method: 'client_secret_basic',
        scope: 'read:data write:data',
      },
      {
        client_id: 'post-client',
        client_secret: 'post-secret',
        grant_types: ['client_credentials'],
        redirect_uris: [],
        response_types: [],
        token_endpoint_auth_method: 'client_secret_post',
        scope: 'read:data write:data',
      },
      ...CUSTOMERS,
      ...DPOP_CLIENTS,
    ],
    jwks: { keys: [key] },
    // admin:all exists but no client may ask for it: requesting it is invalid_scope.
    scopes: ['read:data', 'write:data', 'admin:all'],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      dPoP,
      introspection: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => undefined,
        useGrantedResource: () => true,
        getResourceServerInfo(ctx, resourceIndicator) {
          if (!RESOURCES.has(resourceIndicator)) {
            throw new errors.InvalidTarget();
          }
          return {
            scope: 'read:data write:data',
            audience: resourceIndicator,
            accessTokenTTL: ttl,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    ttl: { ClientCredentials: ttl },
  });
  provider.on('grant.success', () => { tokensIssued += 1; });
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  return provider;
}

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const providers = [makeProvider(issuer, signingKey('key-1')), makeProvider(issuer, signingKey('key-2'))];
  let active = 0;

  server.on('request', (req, res) => {
    if (req.url === '/__stats') {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ tokens_issued: tokensIssued, token_requests: tokenRequests }));
      return;
    }
    if (req.url === '/__rotate' && req.method === 'POST') {
      active = 1;
      res.end('rotated');
      return;
    }
    const handle = providers[active].callback();
    if (req.method === 'POST' && req.url.startsWith('/token')) {
      tokenRequests += 1;
      // Buffer the form so Auth0's `audience` can be read as `resource`; oidc-provider
      // then uses the already-read body.
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => {
        const form = new URLSearchParams(Buffer.concat(chunks).toString());
        if (form.has('audience') && !form.has('resource')) {
          form.set('resource', form.get('audience'));
          form.delete('audience');
        }
        req.body = form.toString();
        handle(req, res);
      });
      return;
    }
    handle(req, res);
  });
  console.log(`READY ${port}`);
});

process.on('SIGTERM', () => process.exit(0));

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
// - private_key_jwt clients (RFC 7523), keys generated at start:
//     pkjwt-rsa   RSA 2048 public key, kid `rsa-1` (RS256 or PS256 assertions)
//     pkjwt-ec    P-256 public key, kid `ec-1` (ES256 assertions)
// - Password grants (RFC 6749 §4.3, and Auth0's password-realm with any `realm`) with refresh
//   tokens, registered with registerGrantType:
//     password-client / password-secret            refresh tokens are not rotated
//     rotating-password-client / password-secret   every refresh rotates the refresh token
//                                                  (reusing a rotated one revokes the grant)
//     pkjwt-ec also has these grants.
//   Users: alice@example.com / alice-password;  mfa@example.com / mfa-password answers
//   `mfa_required`. /__stats adds {"grants": {"<grant_type>": requests}, "realms": [...]}.
//   Test hooks: GET /__client_keys  the private keys as PEM: {"rsa": PKCS#1, "ec": PKCS#8,
//                                    "stray_rsa": an RSA key registered nowhere,
//                                    "rsa_jwk" (alg PS256), "ec_jwk": the same keys as JWK text}
//               GET /__assertions   every client_assertion received: header and claims
// - Token exchange (RFC 8693) and JWT bearer (RFC 7523 §2.1) grants (issue 18), handlers
//   registered with registerGrantType: exchange-client / exchange-secret (client_secret_basic),
//   exchange-public (no client authentication), and exchange-na / exchange-mismatch /
//   exchange-untyped / exchange-secret, whose exchanges answer token_type N_A, a wrong
//   issued_token_type (id_token), no issued_token_type. Subject and actor tokens: ES256 JWTs of
//   the "upstream issuer" (iss https://upstream.example.com, aud https://gateway.example.com,
//   sub and exp required). JWT bearer assertions: iss exchange-client or exchange-public
//   signed with the `bearer` key, or iss the upstream issuer; aud the issuer or token
//   endpoint; exp, jti required, a replayed jti refused. Issued tokens are ES256 JWTs
//   (kid downstream-1) with sub, act.sub (exchange with actor), client_id, aud, scope.
//   GET /__exchange_keys {"upstream", "bearer": PKCS#8 PEM, "upstream_issuer", "gateway"};
//   GET /__exchanges {"exchanges": [{client_id, sub, act, resource, audience, scope, subject_token_type}],
//   "bearer": [{client_id, header, claims}]}
// - Workload identity and signers (issue 18): workload-client (private_key_jwt, P-256 key kid
//   `workload-1`, signed by the test), rotating-key-client (two P-256 keys, kids = their RFC 7638
//   thumbprints); GET /__signer_keys {"workload", "rotation_1", "rotation_2": PKCS#8 PEM,
//   "rotation_kids": [kid1, kid2]}
// - mTLS (RFC 8705), behind en_auth_testkit::MtlsFront (TLS terminated there; the client
//   certificate arrives as URL-encoded PEM in x-client-cert, its CA verdict in x-client-verify):
//     mtls-ca-client           tls_client_auth, subject DN `CN=en-auth mtls client`; also the
//                              password and token-exchange grants (their tokens are not bound)
//     mtls-self-signed-client  self_signed_tls_client_auth, registered by POST /__mtls
//   both with certificate-bound access tokens (cnf.x5t#S256).
//   Test hook: POST /__mtls {"token_endpoint_alias": url, "self_signed_x5c": base64 DER}
//              (mtls_endpoint_aliases.token_endpoint in discovery; the self-signed client's cert)
// - Refresh rotation across a fleet (issue 18): GET /__grant_errors  token-endpoint errors by
//   code, e.g. {"invalid_grant": n} (a reused rotated refresh token is one).
import http from 'node:http';
import crypto from 'node:crypto';
import Provider, { errors } from 'oidc-provider';
import * as jose from 'jose';

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

// private_key_jwt clients: the private halves are handed to the tests through
// /__client_keys; only the public halves are registered.
const CLIENT_KEYS = {
  rsa: crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey,
  ec: crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey,
  stray_rsa: crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey,
};
function publicJwk(privateKey, kid) {
  const { kty, n, e, crv, x, y } = crypto.createPublicKey(privateKey).export({ format: 'jwk' });
  return JSON.parse(JSON.stringify({ kty, n, e, crv, x, y, kid, use: 'sig' }));
}
const KEY_CLIENTS = [
  ['pkjwt-rsa', publicJwk(CLIENT_KEYS.rsa, 'rsa-1')],
  ['pkjwt-ec', publicJwk(CLIENT_KEYS.ec, 'ec-1')],
].map(([clientId, jwk]) => ({
  client_id: clientId,
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
  token_endpoint_auth_method: 'private_key_jwt',
  jwks: { keys: [jwk] },
  scope: 'read:data write:data',
}));
const assertions = [];

// Password grants: users, clients, and the handler registered for both grant types.
const PASSWORD_REALM = 'http://auth0.com/oauth/grant-type/password-realm';
const USER_GRANTS = ['password', PASSWORD_REALM, 'refresh_token'];
const USERS = new Map([
  ['alice@example.com', { password: 'alice-password' }],
  ['mfa@example.com', { password: 'mfa-password', mfa: true }],
]);
const PASSWORD_CLIENTS = ['password-client', 'rotating-password-client'].map((clientId) => ({
  client_id: clientId,
  client_secret: 'password-secret',
  grant_types: USER_GRANTS,
  redirect_uris: [],
  response_types: [],
  token_endpoint_auth_method: 'client_secret_basic',
  scope: 'openid offline_access',
}));
KEY_CLIENTS.find((c) => c.client_id === 'pkjwt-ec').grant_types.push(...USER_GRANTS);
const grantRequests = {};
const realms = [];

async function passwordGrant(ctx) {
  const { provider, client, params } = ctx.oidc;
  const user = USERS.get(params.username);
  if (!user || user.password !== params.password) {
    throw new errors.InvalidGrant('wrong username or password');
  }
  if (user.mfa) {
    throw new errors.CustomOIDCProviderError('mfa_required', 'Multifactor authentication required');
  }
  const scope = 'openid offline_access';
  const grant = new provider.Grant({ clientId: client.clientId, accountId: params.username });
  grant.addOIDCScope(scope);
  const grantId = await grant.save();
  const source = { accountId: params.username, client, grantId, gty: 'password', scope };
  const accessToken = new provider.AccessToken(source);
  const refreshToken = new provider.RefreshToken(source);
  ctx.body = {
    access_token: await accessToken.save(),
    token_type: 'Bearer',
    expires_in: accessToken.expiration,
    refresh_token: await refreshToken.save(),
    scope,
  };
}
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
  // pkjwt-ec too: a nonce retry must carry a fresh client assertion (they are single-use).
  requireNonce: (ctx) => ['dpop-nonce-client', 'pkjwt-ec'].includes(ctx.oidc?.client?.clientId),
};
// --- end DPoP ---
// --- refresh rotation across a fleet (issue 18) ---
const grantErrors = {};
function countGrantErrors(provider) {
  provider.on('grant.error', (ctx, err) => {
    const code = err?.error || 'unknown';
    grantErrors[code] = (grantErrors[code] || 0) + 1;
  });
}
function serveGrantErrors(req, res) {
  if (req.url !== '/__grant_errors') return false;
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify(grantErrors));
  return true;
}
// --- end refresh rotation across a fleet ---

// --- workload identity and signers (issue 18) ---
// workload-client: private_key_jwt from a key the test holds (it plays the kubelet / SPIFFE
// agent that issues the assertion). rotating-key-client: two keys registered, each under its
// RFC 7638 thumbprint as kid (what en-auth's PemFileSigner announces), for key rotation.
const SIGNER_KEYS = {
  workload: crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey,
  rotation_1: crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey,
  rotation_2: crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey,
};
function jwkThumbprint(privateKey) {
  const { crv, kty, x, y } = crypto.createPublicKey(privateKey).export({ format: 'jwk' });
  return crypto.createHash('sha256').update(JSON.stringify({ crv, kty, x, y })).digest('base64url');
}
const ROTATION_KIDS = [jwkThumbprint(SIGNER_KEYS.rotation_1), jwkThumbprint(SIGNER_KEYS.rotation_2)];
const SIGNER_CLIENTS = [
  ['workload-client', [publicJwk(SIGNER_KEYS.workload, 'workload-1')]],
  ['rotating-key-client', [
    publicJwk(SIGNER_KEYS.rotation_1, ROTATION_KIDS[0]),
    publicJwk(SIGNER_KEYS.rotation_2, ROTATION_KIDS[1]),
  ]],
].map(([clientId, keys]) => ({
  client_id: clientId,
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
  token_endpoint_auth_method: 'private_key_jwt',
  jwks: { keys },
  scope: 'read:data write:data',
}));
// GET /__signer_keys: the private keys as PKCS#8 PEM, and the rotation keys' kids.
function signerHooks(req, res) {
  if (req.url !== '/__signer_keys') return false;
  res.setHeader('content-type', 'application/json');
  const pem = (key) => key.export({ format: 'pem', type: 'pkcs8' });
  res.end(JSON.stringify({
    workload: pem(SIGNER_KEYS.workload),
    rotation_1: pem(SIGNER_KEYS.rotation_1),
    rotation_2: pem(SIGNER_KEYS.rotation_2),
    rotation_kids: ROTATION_KIDS,
  }));
  return true;
}
// --- end workload identity and signers ---
// --- mTLS (issue 18) ---
const MTLS_SUBJECT_DN = 'CN=en-auth mtls client';
const MTLS_CLIENT = {
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
  tls_client_certificate_bound_access_tokens: true,
  scope: 'read:data write:data',
};
const MTLS_CLIENTS = [{
  ...MTLS_CLIENT,
  client_id: 'mtls-ca-client',
  token_endpoint_auth_method: 'tls_client_auth',
  tls_client_auth_subject_dn: MTLS_SUBJECT_DN,
}];
MTLS_CLIENTS[0].grant_types.push(...USER_GRANTS, 'urn:ietf:params:oauth:grant-type:token-exchange');
// oidc-provider's default methods, and the two of RFC 8705.
const CLIENT_AUTH_METHODS = [
  'client_secret_basic', 'client_secret_jwt', 'client_secret_post', 'private_key_jwt', 'none',
  'tls_client_auth', 'self_signed_tls_client_auth',
];
const mtlsAliases = {};
// The certificate the front forwarded (never one the client wrote itself: the front
// replaces these headers).
function mtlsCertificate(ctx) {
  const escaped = ctx.get('x-client-cert');
  if (!escaped) return undefined;
  try {
    return new crypto.X509Certificate(decodeURIComponent(escaped));
  } catch {
    return undefined;
  }
}
const mTLS = {
  enabled: true,
  certificateBoundAccessTokens: true,
  tlsClientAuth: true,
  selfSignedTlsClientAuth: true,
  getCertificate: mtlsCertificate,
  certificateAuthorized: (ctx) => ctx.get('x-client-verify') === 'SUCCESS',
  certificateSubjectMatches(ctx, property, expected) {
    const cert = mtlsCertificate(ctx);
    // Node lists the RDNs most significant first; RFC 4514 strings the other way round.
    return property === 'tls_client_auth_subject_dn'
      && cert?.subject.split('\n').reverse().join(',') === expected;
  },
};
// mtls_endpoint_aliases in the discovery document, once POST /__mtls named the front.
function mtlsDiscovery(provider) {
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.path === '/.well-known/openid-configuration' && mtlsAliases.token_endpoint) {
      ctx.body = { ...ctx.body, mtls_endpoint_aliases: { ...mtlsAliases } };
    }
  });
}
// POST /__mtls: the alias of the token endpoint, and the self-signed client's certificate.
function mtlsHook(req, res, providers) {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', async () => {
    try {
      const body = JSON.parse(Buffer.concat(chunks).toString() || '{}');
      if (body.token_endpoint_alias) mtlsAliases.token_endpoint = body.token_endpoint_alias;
      if (body.self_signed_x5c) {
        const cert = new crypto.X509Certificate(Buffer.from(body.self_signed_x5c, 'base64'));
        const jwk = { ...cert.publicKey.export({ format: 'jwk' }), x5c: [body.self_signed_x5c] };
        const metadata = {
          ...MTLS_CLIENT,
          client_id: 'mtls-self-signed-client',
          token_endpoint_auth_method: 'self_signed_tls_client_auth',
          jwks: { keys: [jwk] },
        };
        for (const provider of providers) {
          await provider.Client.adapter.upsert(metadata.client_id, metadata);
        }
      }
      res.end('ok');
    } catch (err) {
      res.statusCode = 400;
      res.end(String(err));
    }
  });
}
// --- end mTLS ---

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
      ...KEY_CLIENTS,
      ...PASSWORD_CLIENTS,
      ...DPOP_CLIENTS,
      ...EXCHANGE_CLIENTS,
      ...SIGNER_CLIENTS,
      ...MTLS_CLIENTS,
    ],
    findAccount: (ctx, sub) => (USERS.has(sub) ? { accountId: sub, claims: () => ({ sub }) } : undefined),
    rotateRefreshToken: (ctx) => ctx.oidc.client.clientId === 'rotating-password-client',
    jwks: { keys: [key] },
    clientAuthMethods: CLIENT_AUTH_METHODS,
    // admin:all exists but no client may ask for it: requesting it is invalid_scope.
    scopes: ['openid', 'offline_access', 'read:data', 'write:data', 'admin:all'],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      dPoP,
      mTLS,
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
    // Every artifact the password grants create gets an explicit lifetime (otherwise the
    // provider prints a notice on stdout, which the tests stop reading after READY).
    ttl: {
      ClientCredentials: ttl, AccessToken: ttl, IdToken: ttl, RefreshToken: 86400, Grant: 86400,
    },
  });
  provider.registerGrantType('password', passwordGrant, ['username', 'password', 'scope']);
  provider.registerGrantType(PASSWORD_REALM, passwordGrant, ['username', 'password', 'scope', 'realm']);
  registerExchangeGrants(provider);
  provider.on('grant.success', () => { tokensIssued += 1; });
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  mtlsDiscovery(provider);
  countGrantErrors(provider); // refresh rotation across a fleet (issue 18)
  return provider;
}

// --- token exchange and JWT bearer (issue 18) ---
// Grant handlers that validate as a real provider does: the subject / actor token and the
// assertion are JWTs verified against the keys of the issuer they name.
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
const TOKEN_TYPES = {
  access: 'urn:ietf:params:oauth:token-type:access_token',
  jwt: 'urn:ietf:params:oauth:token-type:jwt',
  id: 'urn:ietf:params:oauth:token-type:id_token',
};
const UPSTREAM_ISSUER = 'https://upstream.example.com';
const GATEWAY = 'https://gateway.example.com';
const EXCHANGE_KEYS = {
  upstream: crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey,
  bearer: crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey,
  downstream: crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey,
};
const UPSTREAM_KEYS = jose.createLocalJWKSet({ keys: [publicJwk(EXCHANGE_KEYS.upstream, 'upstream-1')] });
const BEARER_KEYS = jose.createLocalJWKSet({ keys: [publicJwk(EXCHANGE_KEYS.bearer, 'bearer-1')] });
// Who may sign a JWT bearer assertion, and with which keys.
const BEARER_ISSUERS = new Map([
  ['exchange-client', BEARER_KEYS], ['exchange-public', BEARER_KEYS], [UPSTREAM_ISSUER, UPSTREAM_KEYS],
]);
const EXCHANGE_GRANTS = [TOKEN_EXCHANGE, JWT_BEARER];
const EXCHANGE_CLIENTS = [
  ...['exchange-client', 'exchange-na', 'exchange-mismatch', 'exchange-untyped'].map((id) => ({
    client_id: id, client_secret: 'exchange-secret', token_endpoint_auth_method: 'client_secret_basic',
  })),
  { client_id: 'exchange-public', token_endpoint_auth_method: 'none' },
].map((c) => ({ ...c, grant_types: EXCHANGE_GRANTS, redirect_uris: [], response_types: [], scope: 'read:data write:data' }));
const exchanges = [];
const bearerAssertions = [];
const seenJtis = new Set();
const EXCHANGE_SCOPES = new Set(['read:data', 'write:data']);

async function verifiedJwt(token, keys, options, what) {
  try {
    const { payload, protectedHeader } = await jose.jwtVerify(token, keys, {
      algorithms: ['ES256'], requiredClaims: ['sub', 'exp'], ...options,
    });
    return { payload, protectedHeader };
  } catch (err) {
    throw new errors.InvalidGrant(`${what} refused: ${err.code || err.message}`);
  }
}

function requestedScope(params) {
  const scope = (params.scope || '').split(' ').filter(Boolean);
  if (scope.some((s) => !EXCHANGE_SCOPES.has(s))) throw new errors.InvalidScope('scope not allowed', params.scope);
  return scope.join(' ');
}

function requestedResources(params) {
  const resources = [].concat(params.resource || []);
  if (resources.some((r) => !RESOURCES.has(r))) throw new errors.InvalidTarget();
  return resources;
}

async function issueJwt(ctx, claims) {
  const now = Math.floor(Date.now() / 1000);
  return new jose.SignJWT({
    ...claims, iss: ctx.oidc.provider.issuer, client_id: ctx.oidc.client.clientId, jti: crypto.randomUUID(),
  })
    .setProtectedHeader({ alg: 'ES256', kid: 'downstream-1', typ: 'at+jwt' })
    .setIssuedAt(now)
    .setExpirationTime(now + ttl)
    .sign(EXCHANGE_KEYS.downstream);
}

async function tokenExchangeGrant(ctx) {
  const { client, params } = ctx.oidc;
  if (![TOKEN_TYPES.access, TOKEN_TYPES.jwt].includes(params.subject_token_type)) {
    throw new errors.InvalidRequest('unsupported subject_token_type');
  }
  const options = { issuer: UPSTREAM_ISSUER, audience: GATEWAY };
  const subject = (await verifiedJwt(params.subject_token, UPSTREAM_KEYS, options, 'subject_token')).payload;
  let actor;
  if (params.actor_token || params.actor_token_type) {
    if (!params.actor_token || params.actor_token_type !== TOKEN_TYPES.jwt) {
      throw new errors.InvalidRequest('actor_token and actor_token_type (jwt) go together');
    }
    actor = (await verifiedJwt(params.actor_token, UPSTREAM_KEYS, options, 'actor_token')).payload;
  }
  const requested = params.requested_token_type || TOKEN_TYPES.access;
  if (![TOKEN_TYPES.access, TOKEN_TYPES.jwt].includes(requested)) {
    throw new errors.InvalidRequest('unsupported requested_token_type');
  }
  const resources = requestedResources(params);
  const scope = requestedScope(params);
  exchanges.push({
    client_id: client.clientId, sub: subject.sub, act: actor?.sub ?? null, resource: resources,
    audience: [].concat(params.audience || []), scope, subject_token_type: params.subject_token_type,
  });
  const token = await issueJwt(ctx, {
    sub: subject.sub, aud: resources.length ? resources : GATEWAY, scope, ...(actor ? { act: { sub: actor.sub } } : {}),
  });
  const body = {
    access_token: token, token_type: 'Bearer', expires_in: ttl, issued_token_type: requested, scope,
  };
  if (client.clientId === 'exchange-na') Object.assign(body, { token_type: 'N_A', issued_token_type: TOKEN_TYPES.jwt });
  if (client.clientId === 'exchange-mismatch') body.issued_token_type = TOKEN_TYPES.id;
  if (client.clientId === 'exchange-untyped') delete body.issued_token_type;
  ctx.body = body;
}

async function jwtBearerGrant(ctx) {
  const { client, params, provider } = ctx.oidc;
  if (!params.assertion) throw new errors.InvalidRequest('missing assertion');
  let iss;
  try {
    iss = jose.decodeJwt(params.assertion).iss;
  } catch {
    throw new errors.InvalidGrant('assertion is not a JWT');
  }
  const keys = BEARER_ISSUERS.get(iss);
  if (!keys) throw new errors.InvalidGrant('assertion issuer is not trusted');
  const audience = [provider.issuer, `${provider.issuer}/token`];
  const { payload, protectedHeader } = await verifiedJwt(params.assertion, keys, {
    issuer: iss, audience, requiredClaims: ['sub', 'exp', 'jti'], maxTokenAge: iss === UPSTREAM_ISSUER ? undefined : '10m',
  }, 'assertion');
  if (seenJtis.has(`${iss} ${payload.jti}`)) throw new errors.InvalidGrant('assertion replayed (jti already used)');
  seenJtis.add(`${iss} ${payload.jti}`);
  bearerAssertions.push({ client_id: client.clientId, header: protectedHeader, claims: payload });
  const resources = requestedResources(params);
  const scope = requestedScope(params);
  const token = await issueJwt(ctx, { sub: payload.sub, aud: resources.length ? resources : provider.issuer, scope });
  ctx.body = { access_token: token, token_type: 'Bearer', expires_in: ttl, scope };
}

function registerExchangeGrants(provider) {
  const common = ['audience', 'resource', 'scope'];
  provider.registerGrantType(TOKEN_EXCHANGE, tokenExchangeGrant, [
    ...common, 'subject_token', 'subject_token_type', 'actor_token', 'actor_token_type', 'requested_token_type',
  ], ['resource', 'audience']);
  provider.registerGrantType(JWT_BEARER, jwtBearerGrant, [...common, 'assertion'], ['resource', 'audience']);
}

function exchangeHooks(req, res) {
  const json = (value) => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify(value));
    return true;
  };
  const pem = (key) => key.export({ format: 'pem', type: 'pkcs8' });
  if (req.url === '/__exchange_keys') {
    return json({
      upstream: pem(EXCHANGE_KEYS.upstream), bearer: pem(EXCHANGE_KEYS.bearer),
      upstream_issuer: UPSTREAM_ISSUER, gateway: GATEWAY,
    });
  }
  if (req.url === '/__exchanges') return json({ exchanges, bearer: bearerAssertions });
  return false;
}
// --- end token exchange and JWT bearer ---

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const providers = [makeProvider(issuer, signingKey('key-1')), makeProvider(issuer, signingKey('key-2'))];
  let active = 0;

  server.on('request', (req, res) => {
    if (exchangeHooks(req, res)) return;
    if (signerHooks(req, res)) return;
    if (req.url === '/__stats') {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({
        tokens_issued: tokensIssued, token_requests: tokenRequests, grants: grantRequests, realms,
      }));
      return;
    }
    if (req.url === '/__client_keys') {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({
        rsa: CLIENT_KEYS.rsa.export({ format: 'pem', type: 'pkcs1' }),
        ec: CLIENT_KEYS.ec.export({ format: 'pem', type: 'pkcs8' }),
        stray_rsa: CLIENT_KEYS.stray_rsa.export({ format: 'pem', type: 'pkcs8' }),
        rsa_jwk: JSON.stringify({ ...CLIENT_KEYS.rsa.export({ format: 'jwk' }), kid: 'rsa-1', alg: 'PS256' }),
        ec_jwk: JSON.stringify({ ...CLIENT_KEYS.ec.export({ format: 'jwk' }), kid: 'ec-1' }),
      }));
      return;
    }
    if (serveGrantErrors(req, res)) return; // refresh rotation across a fleet (issue 18)
    if (req.url === '/__assertions') {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(assertions));
      return;
    }
    if (req.url === '/__mtls' && req.method === 'POST') {
      mtlsHook(req, res, providers);
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
        recordAssertion(form.get('client_assertion'));
        const grantType = form.get('grant_type');
        grantRequests[grantType] = (grantRequests[grantType] || 0) + 1;
        if (form.has('realm')) realms.push(form.get('realm'));
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

// Keeps the header and claims of a client_assertion (not its signature) for the tests.
function recordAssertion(jwt) {
  if (!jwt) return;
  try {
    const [header, claims] = jwt.split('.').slice(0, 2)
      .map((part) => JSON.parse(Buffer.from(part, 'base64url').toString()));
    assertions.push({ header, claims });
  } catch {
    assertions.push({ malformed: true });
  }
}

// The tests stop reading stdout after READY: a later write must not kill the provider.
process.stdout.on('error', () => {});

process.on('SIGTERM', () => process.exit(0));

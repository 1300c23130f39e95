// Known-answer vectors for Cognito SRP from amazon-cognito-identity-js (AWS's JavaScript client),
// on the same inputs as the pycognito vectors, so the two official libraries check each other:
//
//   node tests/peers/srp_vectors.mjs en-auth-srp/tests/vectors/pycognito.json \
//     > en-auth-srp/tests/vectors/amazon-cognito-identity-js.json
//
// a and the clock are fixed through the library's own objects (smallAValue, Date).
import fs from 'node:fs';
import crypto from 'node:crypto';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const AuthenticationHelper = require('amazon-cognito-identity-js/lib/AuthenticationHelper.js').default;
const BigInteger = require('amazon-cognito-identity-js/lib/BigInteger.js').default;
const DateHelper = require('amazon-cognito-identity-js/lib/DateHelper.js').default;

const input = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const RealDate = Date;

function withClock(text, fn) {
  // pycognito's timestamp names the instant; parse it back and freeze Date at it.
  const [, mon, day, time, , year] = text.split(' ');
  const at = new RealDate(`${mon} ${day} ${year} ${time} GMT`);
  globalThis.Date = class extends RealDate { constructor(...a) { super(...(a.length ? a : [at])); } };
  try { return fn(); } finally { globalThis.Date = RealDate; }
}

const promisify = (f) => new Promise((resolve, reject) => f((err, v) => (err ? reject(err) : resolve(v))));

const vectors = [];
for (const v of input.vectors) {
  const poolName = v.pool_id.split('_')[1];
  const helper = new AuthenticationHelper(poolName);
  helper.smallAValue = new BigInteger(v.a, 16);
  helper.largeAValue = undefined;
  const A = await promisify((cb) => helper.getLargeAValue(cb));
  const B = new BigInteger(v.B, 16);
  const salt = new BigInteger(v.salt, 16);
  const key = await promisify((cb) => helper.getPasswordAuthenticationKey(v.user_id, v.password, B, salt, cb));
  const x = new BigInteger(helper.hexHash(helper.padHex(salt) + helper.hash(`${poolName}${v.user_id}:${v.password}`)), 16);
  const S = await promisify((cb) => helper.calculateS(x, B, cb));
  const timestamp = withClock(v.timestamp, () => new DateHelper().getNowString());
  // As CognitoUser.authenticateUserDefault builds the claim.
  const message = Buffer.concat([
    Buffer.from(poolName, 'utf8'), Buffer.from(v.user_id, 'utf8'),
    Buffer.from(v.secret_block, 'base64'), Buffer.from(timestamp, 'utf8'),
  ]);
  const signature = crypto.createHmac('sha256', Buffer.from(key)).update(message).digest('base64');
  const secretHash = crypto.createHmac('sha256', v.client_secret).update(v.user_id + v.client_id).digest('base64');
  vectors.push({
    ...v, A: A.toString(16), u: helper.UValue.toString(16), x: x.toString(16), S: S.toString(16),
    key: Buffer.from(key).toString('hex'), timestamp, signature, secret_hash: secretHash,
  });
}
const pkg = require('amazon-cognito-identity-js/package.json');
process.stdout.write(JSON.stringify({ generator: `amazon-cognito-identity-js ${pkg.version}`, k: helperK(), vectors }, null, 1) + '\n');

function helperK() { return new AuthenticationHelper('x').k.toString(16); }

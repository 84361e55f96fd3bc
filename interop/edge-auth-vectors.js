#!/usr/bin/env node
// Test vectors for clientmq-core's EdgeAuth verifier (crates/core/src/edge_auth.rs), minted by the
// real `phenix-edge-auth` package (1.2.4, pinned in package-lock.json).
//
//   cd interop && npm ci --ignore-scripts    # or: npm install --ignore-scripts --no-save phenix-edge-auth@1.2.4
//   node edge-auth-vectors.js            # rewrites ../crates/core/tests/fixtures/edge-auth-vectors.json
//   node edge-auth-vectors.js --check    # exits 1 if the committed fixture differs
//
// Every expiry is a fixed date (`expiresAt`), never `expiresInSeconds`, so the output is the same
// bytes on every run. Each vector records the token, the secret table the verifier is built from,
// the `now_ms` to verify at, and what clientmq must answer: `{"ok": claims}` or
// `{"refusal": label}`. Expected claims (and `rawClaims`, the signed claims JSON) are what the
// package's own `verifyAndDecode` decodes, not what clientmq computes. `package_verdict` is what
// `verifyAndDecode` answers with the secret the table holds for the token's application, or
// `no-secret-for-application` (it checks the digest only: no expiry, no type).
'use strict';

const fs = require('fs');
const path = require('path');
const TokenBuilder = require('phenix-edge-auth');
const DigestTokens = require('phenix-edge-auth/src/DigestTokens');
const packageVersion = require('phenix-edge-auth/package.json').version;

const APP = 'my-application-id';
const SECRET = 'my-secret';
const TABLE = {[APP]: SECRET};
const NOW = 1700000000000; // 2023-11-14T22:13:20Z
const LATER = 1800000000000; // 2027-01-15T08:00:00Z

function builder(applicationId = APP, secret = SECRET) {
  return new TokenBuilder()
    .withApplicationId(applicationId)
    .withSecret(secret)
    .expiresAt(new Date(LATER));
}

const b64 = (text) => Buffer.from(text, 'utf8').toString('base64');
const envelopeOf = (token) => JSON.parse(Buffer.from(token.slice('DIGEST:'.length), 'base64').toString('utf8'));
const tokenOf = (envelope) => 'DIGEST:' + b64(JSON.stringify(envelope));

// Signs claims with the package's own signAndEncode, bypassing the builder's setters.
function signed(claims, applicationId = APP, secret = SECRET) {
  return new DigestTokens().signAndEncode(applicationId, secret, claims);
}

// Claims whose JSON is whatever `json()` returns: JSON.stringify honours toJSON, which lets the
// package sign claims its builder would never produce.
function signedRaw(json, applicationId = APP, secret = SECRET) {
  return signed({expires: LATER, toJSON: json}, applicationId, secret);
}

function packageVerdict(table, token) {
  let applicationId;
  try {
    applicationId = envelopeOf(token).applicationId;
  } catch (e) {
    applicationId = undefined;
  }
  const known = typeof applicationId === 'string' && Object.prototype.hasOwnProperty.call(table, applicationId);
  if (typeof applicationId === 'string' && applicationId !== '' && !known) {
    return {verified: false, code: 'no-secret-for-application'};
  }
  // Without a usable applicationId the package refuses before it looks at the secret.
  const secret = known ? table[applicationId] : Object.values(table)[0];
  try {
    return new DigestTokens().verifyAndDecode(secret, token);
  } catch (e) {
    return {verified: false, code: 'throws'};
  }
}

// The claims as the package decodes them, in the field names clientmq's test compares.
function expectedClaims(value) {
  return {
    applicationId: value.applicationId,
    expires: value.expires,
    type: value.type === undefined ? null : value.type,
    sessionId: value.sessionId === undefined ? null : value.sessionId,
    remoteAddress: value.remoteAddress === undefined ? null : value.remoteAddress,
    originStreamId: value.originStreamId === undefined ? null : value.originStreamId,
    requiredTag: value.requiredTag === undefined ? null : value.requiredTag,
    capabilities: value.capabilities || [],
    applyTags: value.applyTags || [],
  };
}

const vectors = [];

function ok(name, description, token, {table = TABLE, now = NOW} = {}) {
  const verdict = packageVerdict(table, token);
  if (!verdict.verified) {
    throw new Error(`${name}: the package itself does not verify it (${verdict.code})`);
  }
  vectors.push({
    name, description, secrets: table, now_ms: now, token,
    expect: {ok: {...expectedClaims(verdict.value), rawClaims: envelopeOf(token).token}},
    package_verdict: verdict.code,
  });
}

function refused(name, description, token, label, {table = TABLE, now = NOW} = {}) {
  vectors.push({
    name, description, secrets: table, now_ms: now, token,
    expect: {refusal: label},
    package_verdict: packageVerdict(table, token).code,
  });
}

// --- accepted ---------------------------------------------------------------------------------

ok('auth-only', 'forAuthenticateOnly: type "auth"', builder().forAuthenticateOnly().build());
ok('unrestricted', 'no type claim: usable for everything, authentication included', builder().build());
ok('expires-one-ms-after-now', 'valid while now < expires', builder().forAuthenticateOnly().build(),
  {now: LATER - 1});
ok('remote-address', 'bound to a remote address', builder().forAuthenticateOnly().forRemoteAddress('10.1.2.3').build());
ok('remote-address-ipv6', 'bound to an IPv6 remote address',
  builder().forAuthenticateOnly().forRemoteAddress('2001:db8::1').build());
ok('session', 'bound to a session id', builder().forAuthenticateOnly().forSession('session-id').build());
ok('room', 'forRoom: requiredTag "roomId:..."', builder().forAuthenticateOnly().forRoom('my-room.123456').build());
ok('room-alias', 'forRoomAlias: requiredTag "roomAlias:..."', builder().forRoomAlias('my-room').build());
ok('channel', 'forChannel: requiredTag "channelId:..."',
  builder().forChannel('us-northeast#my-application-id#my-channel.1345').build());
ok('channel-alias', 'forChannelAlias: requiredTag "channelAlias:..."', builder().forChannelAlias('my-channel').build());
ok('tag', 'forTag: a free-form requiredTag', builder().forTag('my-tag=awesome').build());
ok('last-restriction-wins', 'forRoom then forChannelAlias: one requiredTag, the last one',
  builder().forRoom('my-room.123456').forChannelAlias('my-channel').build());
ok('origin-stream', 'forOriginStream', builder().forOriginStream('us-west#my-application-id#stream.1').build());
ok('capabilities-and-apply-tags', 'withCapability twice and applyTag twice',
  builder().withCapability('multi-bitrate').withCapability('streaming').applyTag('customer1').applyTag('vip').build());
ok('everything', 'every claim the builder can set, auth type',
  builder().forAuthenticateOnly().forSession('session-id').forRemoteAddress('10.1.2.3')
    .forOriginStream('origin').forRoomAlias('my-room').withCapability('multi-bitrate').applyTag('customer1').build());
ok('several-applications', 'the table holds several applications',
  builder('second-app', 'second-secret').forAuthenticateOnly().build(),
  {table: {[APP]: SECRET, 'second-app': 'second-secret', 'third-app': 'third-secret'}});
ok('unicode', 'non-ASCII application id, secret and claims: key and message are UTF-8',
  builder('appé', 'sécret-☕').forAuthenticateOnly().forRoomAlias('café-☕-𝄞').build(),
  {table: {'appé': 'sécret-☕'}});
ok('long-secret', 'application id + secret longer than the SHA-512 block (128 bytes): HMAC hashes the key',
  builder(APP, 'x'.repeat(300)).forAuthenticateOnly().build(), {table: {[APP]: 'x'.repeat(300)}});
ok('fractional-expires', 'signAndEncode with a fractional expires (expiresInSeconds(0.0001) makes one)',
  signed({expires: NOW + 0.5, type: 'auth'}));
ok('huge-expires', 'an expires beyond u64 milliseconds (JSON 1e+300): never expires',
  signed({expires: 1e300, type: 'auth'}));
ok('unknown-claim', 'claims the builder does not know are ignored (kept in the raw claims)',
  signedRaw(() => ({expires: LATER, type: 'auth', uri: 'wss://example.invalid'})));

// --- refused ----------------------------------------------------------------------------------

refused('expired', 'expires in the past', builder().forAuthenticateOnly().build(), 'expired', {now: LATER + 1});
refused('expires-now', 'expires == now is expired', builder().forAuthenticateOnly().build(), 'expired', {now: LATER});
refused('negative-expires', 'expiresAt a date before the epoch', new TokenBuilder().withApplicationId(APP)
  .withSecret(SECRET).expiresAt(new Date(-1000)).forAuthenticateOnly().build(), 'expired');
refused('stream', 'forStreamingOnly', builder().forStreamingOnly().forRoom('my-room.123456').build(), 'wrong-type');
refused('publish', 'forPublishingOnly', builder().forPublishingOnly().build(), 'wrong-type');
refused('publish-capabilities', 'forPublishingOnly with capabilities',
  builder().forPublishingOnly().withCapability('multi-bitrate').build(), 'wrong-type');
refused('unknown-type', 'a type the builder cannot set, signed by signAndEncode',
  signed({expires: LATER, type: 'admin'}), 'wrong-type');
refused('stream-expired', 'both streaming-only and expired: the type is reported',
  builder().forStreamingOnly().build(), 'wrong-type', {now: LATER + 1});
refused('wrong-secret', 'the table has another secret for the application',
  builder().forAuthenticateOnly().build(), 'bad-digest', {table: {[APP]: 'other-secret'}});
refused('unknown-application', 'the token names an application the table does not have',
  builder('other-app', SECRET).forAuthenticateOnly().build(), 'unknown-application');
{
  const envelope = envelopeOf(builder().forAuthenticateOnly().build());
  refused('tampered-claims', 'claims edited after signing (longer expiry), digest kept',
    tokenOf({...envelope, token: envelope.token.replace(String(LATER), String(LATER * 2))}), 'bad-digest');
  const stream = envelopeOf(builder().forStreamingOnly().build());
  refused('tampered-type', 'a stream token re-typed as auth, digest kept',
    tokenOf({...stream, token: stream.token.replace('"stream"', '"auth"')}), 'bad-digest');
  const digest = Buffer.from(envelope.digest, 'base64');
  digest[63] ^= 1;
  refused('tampered-digest', 'the digest\'s last bit flipped',
    tokenOf({...envelope, digest: digest.toString('base64')}), 'bad-digest');
  refused('truncated-digest', 'the digest cut to 32 bytes',
    tokenOf({...envelope, digest: digest.subarray(0, 32).toString('base64')}), 'bad-digest');
  refused('unpadded-digest', 'the digest without its base64 padding: the package compares strings',
    tokenOf({...envelope, digest: envelope.digest.replace(/=+$/, '')}), 'bad-digest');
  refused('digest-not-base64', 'the digest is not base64',
    tokenOf({...envelope, digest: 'not base64!'}), 'bad-digest');
  refused('application-swapped', 'applicationId changed to another known application: the key differs',
    tokenOf({...envelope, applicationId: 'second-app'}), 'bad-digest',
    {table: {[APP]: SECRET, 'second-app': SECRET}});
  ok('key-concatenation', 'the key is applicationId + secret unseparated: "my-application-i" + "dmy-secret" '
    + 'is the key of "my-application-id" + "my-secret", so the moved applicationId still verifies',
    tokenOf({...envelope, applicationId: 'my-application-i'}), {table: {'my-application-i': 'dmy-secret'}});
  const body = Buffer.from(tokenOf(envelope).slice('DIGEST:'.length), 'base64').toString('utf8');
  ok('duplicate-envelope-key', 'the envelope names applicationId twice: the last one counts (JSON.parse)',
    'DIGEST:' + b64('{"applicationId":"second-app",' + body.slice(1)), {table: {[APP]: SECRET, 'second-app': 'x'}});
  ok('unpadded-envelope', 'the envelope\'s base64 without its padding',
    tokenOf(envelope).replace(/=+$/, ''));
  refused('missing-token', 'envelope without token', tokenOf({applicationId: APP, digest: envelope.digest}),
    'malformed');
  refused('missing-digest', 'envelope without digest', tokenOf({applicationId: APP, token: envelope.token}),
    'malformed');
  refused('missing-application', 'envelope without applicationId',
    tokenOf({digest: envelope.digest, token: envelope.token}), 'malformed');
  refused('empty-application', 'empty applicationId',
    tokenOf({...envelope, applicationId: ''}), 'malformed');
  refused('numeric-digest', 'digest is a number', tokenOf({...envelope, digest: 42}), 'malformed');
  refused('object-token', 'token is an object, not a JSON string',
    tokenOf({...envelope, token: JSON.parse(envelope.token)}), 'malformed');
  refused('lowercase-prefix', 'prefix is case-sensitive',
    'digest:' + builder().forAuthenticateOnly().build().slice('DIGEST:'.length), 'not-digest');
}
refused('claims-not-object', 'signed claims that are a JSON string, not an object',
  signedRaw(() => 'not an object'), 'bad-claims');
refused('claims-array', 'signed claims that are a JSON array', signedRaw(() => [LATER]), 'bad-claims');
refused('claims-without-expires', 'signed claims without expires',
  signedRaw(() => ({type: 'auth'})), 'bad-claims');
refused('claims-string-expires', 'signed claims whose expires is a string',
  signedRaw(() => ({expires: String(LATER), type: 'auth'})), 'bad-claims');
refused('claims-numeric-session', 'signed claims whose sessionId is a number',
  signedRaw(() => ({expires: LATER, type: 'auth', sessionId: 42})), 'bad-claims');
refused('claims-null-type', 'signed claims whose type is null',
  signedRaw(() => ({expires: LATER, type: null})), 'bad-claims');
refused('claims-capability-number', 'signed claims with a non-string capability',
  signedRaw(() => ({expires: LATER, capabilities: ['a', 1]})), 'bad-claims');
refused('claims-with-application-id', 'signed claims that carry their own applicationId (the package overwrites it)',
  signedRaw(() => ({expires: LATER, type: 'auth', applicationId: 'someone-else'})), 'bad-claims');

refused('empty', 'the empty string', '', 'not-digest');
refused('static-token', 'a static token', 'interop-token', 'not-digest');
refused('jwt', 'a JWT', 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl', 'not-digest');
refused('prefix-only', 'DIGEST: and nothing', 'DIGEST:', 'malformed');
refused('bad-token', 'the package\'s own bad-token test', 'DIGEST:bad-token', 'malformed');
refused('not-base64', 'not base64 after the prefix', 'DIGEST:!!!!', 'malformed');
refused('base64-of-text', 'base64 of text that is not JSON', 'DIGEST:' + b64('hello world'), 'malformed');
refused('base64-of-array', 'base64 of a JSON array', 'DIGEST:' + b64('[1,2,3]'), 'malformed');
refused('base64-of-null', 'base64 of JSON null', 'DIGEST:' + b64('null'), 'malformed');
refused('base64-of-binary', 'base64 of bytes that are not UTF-8', 'DIGEST:' + Buffer.from([0xff, 0xfe, 0x00, 0x7b]).toString('base64'), 'malformed');
refused('deep-json', 'deeply nested JSON', 'DIGEST:' + b64('['.repeat(1000) + ']'.repeat(1000)), 'malformed');

const fixture = {
  generator: 'interop/edge-auth-vectors.js',
  package: `phenix-edge-auth@${packageVersion}`,
  note: 'Generated: do not edit by hand. Regenerate with `node edge-auth-vectors.js` in interop/.',
  vectors,
};

const out = JSON.stringify(fixture, null, 2) + '\n';
const target = path.join(__dirname, '..', 'crates', 'core', 'tests', 'fixtures', 'edge-auth-vectors.json');

if (process.argv.includes('--check')) {
  const committed = fs.existsSync(target) ? fs.readFileSync(target, 'utf8') : '';
  if (committed !== out) {
    console.error(`${target} differs from what phenix-edge-auth@${packageVersion} generates`);
    process.exit(1);
  }
  console.log(`${target}: ${vectors.length} vectors, up to date`);
} else {
  fs.mkdirSync(path.dirname(target), {recursive: true});
  fs.writeFileSync(target, out);
  console.log(`wrote ${vectors.length} vectors to ${target}`);
}

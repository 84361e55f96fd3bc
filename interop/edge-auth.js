// EdgeAuth digest tokens end to end: the unmodified Phenix web SDK (Node build) authenticates
// against a running clientmq-server with tokens minted now, by the real `phenix-edge-auth`
// package (1.2.4, pinned in package-lock.json), the way interop/edge-auth-vectors.js mints its
// vectors but with expiries relative to now.
//
//   node edge-auth.js            the harness (run by crates/server/tests/edge_auth_sdk.rs)
//   node edge-auth.js mint ...   prints one token and its signed claims (see `mint` below)
//
// The harness needs a server started with `--edge-auth-file` naming CLIENTMQ_EDGE_APP with
// CLIENTMQ_EDGE_SECRET, and `--tokens CLIENTMQ_TOKEN` (a static token, accepted alongside), on
// 127.0.0.1:CLIENTMQ_PORT with the embedded backend and no trusted proxies. Each case is checked
// from the SDK's side (the status its authentication callback reports, or what a room request
// answers) and from the server's /metrics (`clientmq_token_refusals_total{reason}` grows by one
// for the expected reason and no other). It prints an `ok - ...` line per step and exits non-zero
// on the first failure. INTEROP_SDK_LOGS=1 shows the SDK's own log.
'use strict';

const assert = require('node:assert/strict');
const TokenBuilder = require('phenix-edge-auth');

const REFUSALS = 'clientmq_token_refusals_total';

// `node edge-auth.js mint --application A --secret S [--expires-in SECONDS] [--auth-only]
//  [--session ID] [--room ID] [--remote-address IP]` prints two lines: `token DIGEST:...` and
// `claims JSON`, the claims exactly as signed (what a gateway forwards in `Clientmq-Claims`).
function mint(args) {
    const options = {};

    for (let i = 0; i < args.length; i++) {
        const name = args[i];

        if (name === '--auth-only') {
            options.authOnly = true;
        } else if (name.startsWith('--') && i + 1 < args.length) {
            options[name.slice(2)] = args[++i];
        } else {
            throw new Error(`mint: unexpected argument ${name}`);
        }
    }

    assert.ok(options.application && options.secret, 'mint needs --application and --secret');
    let builder = new TokenBuilder()
        .withApplicationId(options.application)
        .withSecret(options.secret)
        .expiresInSeconds(Number(options['expires-in'] || 60));

    if (options.authOnly) {
        builder = builder.forAuthenticateOnly();
    }

    if (options.session) {
        builder = builder.forSession(options.session);
    }

    if (options.room) {
        builder = builder.forRoom(options.room);
    }

    if (options['remote-address']) {
        builder = builder.forRemoteAddress(options['remote-address']);
    }

    const token = builder.build();
    console.log(`token ${token}`);
    console.log(`claims ${envelopeOf(token).token}`);
}

const envelopeOf = (token) => JSON.parse(Buffer.from(token.slice('DIGEST:'.length), 'base64').toString('utf8'));
const tokenOf = (envelope) => 'DIGEST:' + Buffer.from(JSON.stringify(envelope), 'utf8').toString('base64');

async function harness() {
    const {Client, call, fail, gauge, metrics, sleep, sockets, step, waitFor} = require('./sdk.js');

    const PORT = Number(process.env.CLIENTMQ_PORT);
    const APP = process.env.CLIENTMQ_EDGE_APP;
    const SECRET = process.env.CLIENTMQ_EDGE_SECRET;
    const STATIC_TOKEN = process.env.CLIENTMQ_TOKEN;
    const WATCHDOG_MS = 60000;

    assert.ok(PORT > 0, 'CLIENTMQ_PORT must name the port of a running clientmq-server');
    assert.ok(APP && SECRET && STATIC_TOKEN, 'CLIENTMQ_EDGE_APP, CLIENTMQ_EDGE_SECRET and CLIENTMQ_TOKEN are needed');
    setTimeout(() => fail(new Error(`watchdog: the harness ran longer than ${WATCHDOG_MS} ms`)), WATCHDOG_MS).unref();

    // A builder for the configured application, valid for a minute from now.
    const builder = ({application = APP, secret = SECRET, expiresIn = 60} = {}) => new TokenBuilder()
        .withApplicationId(application)
        .withSecret(secret)
        .expiresInSeconds(expiresIn);

    // Every `clientmq_token_refusals_total{reason}` series, by reason.
    async function refusals() {
        const counts = {};

        for (const line of (await metrics(PORT)).split('\n')) {
            const match = /^clientmq_token_refusals_total\{reason="([^"]+)"\} (\d+)/.exec(line);

            if (match) {
                counts[match[1]] = Number(match[2]);
            }
        }

        return counts;
    }

    // Runs `action`, then waits until the refusal counter of `reason` has grown by one (none when
    // `reason` is null), and checks that no other reason moved.
    async function counted(reason, action) {
        const before = await refusals();
        const result = await action();
        const expected = {...before};

        if (reason !== null) {
            expected[reason] = (before[reason] || 0) + 1;
            await waitFor(`${REFUSALS}{reason="${reason}"} to count the refusal`,
                async () => (await refusals())[reason] === expected[reason]);
        }

        assert.deepEqual(await refusals(), expected, `/metrics counts ${reason === null ? 'no refusal' : `one ${reason}`}`);

        return result;
    }

    const clients = [];

    function client(name, token) {
        const c = new Client(name, PORT, token);
        clients.push(c);

        return c;
    }

    // A client whose token is refused: the SDK's authentication callback reports `unauthorized`,
    // and /metrics counts `reason`.
    async function refused(name, token, reason) {
        const c = client(name, token);
        const {status, sessionId} = await counted(reason, () => c.authenticate());
        assert.equal(status, 'unauthorized', `${name} is refused (${reason})`);
        assert.ok(!sessionId, `${name} gets no session id`);

        return c;
    }

    // A client the SDK authenticates and starts (Client.start: status ok, a session id, its
    // RoomService), with no refusal counted.
    async function online(name, token) {
        const c = client(name, token);
        await counted(null, () => c.start());

        return c;
    }

    // What a room request answers: `{error}` for an mq.Error (the SDK passes it as the error), or
    // `{status, room}`.
    function enter(c, roomId, alias) {
        return new Promise((resolve, reject) => {
            const timer = setTimeout(() => reject(new Error(`${c.name} entering ${roomId}/${alias}: no answer`)), 10000);
            c.rooms.enterRoom(roomId, alias, (error, response) => {
                clearTimeout(timer);
                resolve(error ? {error} : response);
            });
        });
    }

    // The token the SDK re-authenticates with after a reconnect. It keeps the token given to
    // `start` in `_authToken` and offers no way to replace it while online (`reAuthenticate`
    // refuses then); an application resuming with a token minted for its session must set it
    // before the transport drops. This is the one place the harness touches an SDK internal.
    function reconnectWith(c, token) {
        assert.equal(typeof c.pcast._authToken, 'string', 'the SDK keeps its token in _authToken');
        c.pcast._authToken = token;
    }

    // Drops `c`'s transport without a close frame and waits for the SDK to notice and open
    // another one, which is then counted as `c`'s (the SDK makes it itself, unattributed). The
    // SDK leaves `online` when it sees the close, before it makes the new socket; it may be
    // online again (resumed) by the time this returns.
    async function dropTransport(c) {
        const socket = c.ownSockets().find((s) => s.closeCode === null);
        assert.ok(socket, `${c.name} has an open socket`);
        const known = sockets.length;
        socket.ws.terminate();
        await waitFor(`${c.name}'s transport to drop`, () => socket.closeCode !== null);
        const next = await waitFor(`${c.name}'s SDK to open another socket`,
            () => sockets.slice(known).find((s) => s.owner === null));
        next.owner = c.name;
    }

    // --- static tokens still work alongside the applications ---
    await online('sam', STATIC_TOKEN);
    await refused('sid', `${STATIC_TOKEN}-not`, 'unknown-token');
    step('a static --tokens token authenticates alongside --edge-auth-file; another plain token is refused (unknown-token)');

    // --- valid digest tokens: rooms and chat ---
    const alice = await online('alice', builder().forAuthenticateOnly().build());
    const bob = await online('bob', builder().build());
    assert.notEqual(alice.sessionId, bob.sessionId);
    step('digest tokens minted now (auth-only and unrestricted) authenticate with distinct session ids');

    const alias = `edge-${process.pid}`;
    const created = await call('alice creates a room', (cb) => alice.rooms.createRoom({
        name: 'EdgeAuth room', description: 'digest tokens', type: 'MultiPartyChat', alias
    }, cb));
    assert.equal(created.status, 'ok');
    const roomId = created.room.getRoomId();
    await alice.enter(roomId, null);
    await bob.enter(null, alias);
    const both = [alice.sessionId, bob.sessionId].sort().join();
    await waitFor('alice and bob to see each other', () => alice.memberIds().join() === both && bob.memberIds().join() === both);
    alice.rooms.getChatService().start(10);
    bob.rooms.getChatService().start(10);
    await waitFor('both chat subscriptions', async () => (await gauge(PORT, 'clientmq_subscriptions')) === 4);
    await alice.send('hello from a digest token');
    await bob.send('hello back');
    for (const c of [alice, bob]) {
        await waitFor(`${c.name} to receive both messages`, () => c.messages().length >= 2);
        assert.deepEqual(c.messages(), ['alice: hello from a digest token', 'bob: hello back']);
    }
    step('with digest tokens the SDK creates a room, both enter it and chat both ways');

    // --- refusals at authentication ---
    const shortLived = builder({expiresIn: 2}).forAuthenticateOnly().build();
    const expires = JSON.parse(envelopeOf(shortLived).token).expires;
    await online('erin', shortLived);
    await sleep(Math.max(0, expires - Date.now()) + 250);
    await refused('erin-again', shortLived, 'expired');
    step('a token valid for 2 s authenticates at once and is refused (expired) once the server\'s clock passes it');

    await refused('ed', builder({expiresIn: -5}).forAuthenticateOnly().build(), 'expired');
    step('a token minted already expired is refused (expired)');

    const envelope = envelopeOf(builder().forAuthenticateOnly().build());
    const claims = JSON.parse(envelope.token);
    const tampered = tokenOf({...envelope, token: JSON.stringify({...claims, expires: claims.expires + 86400000})});
    await refused('tom', tampered, 'bad-digest');
    step('claims edited after signing (a day longer), digest kept: refused (bad-digest)');

    await refused('una', builder({application: `${APP}-unknown`}).forAuthenticateOnly().build(), 'unknown-application');
    step('a token of an application the server has no secret for is refused (unknown-application)');

    await refused('wes', builder({secret: `${SECRET}-other`}).forAuthenticateOnly().build(), 'bad-digest');
    step('a token signed with another secret than the file\'s is refused (bad-digest)');

    await refused('stu', builder().forStreamingOnly().build(), 'wrong-type');
    step('a streaming-only token is refused (wrong-type)');

    // --- bound to a remote address: the SDK connects from 127.0.0.1 ---
    await refused('rex', builder().forAuthenticateOnly().forRemoteAddress('10.9.9.9').build(), 'remote-address');
    await online('lou', builder().forAuthenticateOnly().forRemoteAddress('127.0.0.1').build());
    step('a token bound to 10.9.9.9 is refused (remote-address); one bound to 127.0.0.1 authenticates');

    // --- bound to a session: resumes that session, and no other ---
    reconnectWith(alice, builder().forAuthenticateOnly().forSession(alice.sessionId).build());
    await counted(null, async () => {
        await dropTransport(alice);
        await waitFor('alice to resume her session', () => alice.pcast.getStatus() === 'online');
    });
    assert.equal(alice.currentSessionId(), alice.sessionId, 'the session is resumed, not replaced');
    await waitFor('alice back in the room with her chat', async () =>
        (await gauge(PORT, 'clientmq_subscriptions')) === 4 && bob.memberIds().join() === both);
    await alice.send('resumed with a session token');
    await waitFor('bob to receive it', () => bob.messages().includes('alice: resumed with a session token'));
    step('after a dropped transport the SDK resumes its session with a token minted forSession(its id); chat goes on');

    reconnectWith(alice, builder().forAuthenticateOnly().forSession(bob.sessionId).build());
    await counted('session', async () => {
        await dropTransport(alice);
        await waitFor('alice\'s resume to be refused', () => alice.pcast.getStatus() === 'reconnect-failed');
    });
    step('a resume with a token minted for another session (bob\'s) is refused (session); the SDK reports reconnect-failed');

    // --- limited to a room ---
    const other = await call('bob creates another room', (cb) => bob.rooms.createRoom({
        name: 'Another room', description: 'not in the token', type: 'MultiPartyChat', alias: `${alias}-other`
    }, cb));
    assert.equal(other.status, 'ok');
    const otherId = other.room.getRoomId();
    assert.notEqual(otherId, roomId);
    const carol = await online('carol', builder().forAuthenticateOnly().forRoom(roomId).build());
    const elsewhere = await counted('room', () => enter(carol, otherId, null));
    assert.equal(elsewhere.error && elsewhere.error.reason, 'unauthorized', `another room: ${JSON.stringify(elsewhere)}`);
    const byAlias = await counted('room', () => enter(carol, null, alias));
    assert.equal(byAlias.error && byAlias.error.reason, 'unauthorized', `by alias: ${JSON.stringify(byAlias)}`);
    const inside = await counted(null, () => enter(carol, roomId, null));
    assert.equal(inside.status, 'ok', `its room: ${JSON.stringify(inside.status)}`);
    carol.rooms.getChatService().start(10);
    await waitFor('bob to see carol join', () => bob.memberIds().includes(carol.sessionId));
    await carol.send('inside my room');
    await waitFor('bob to receive it', () => bob.messages().includes('carol: inside my room'));
    step('a token minted forRoom(id) enters that room and chats; another room, and its own room by alias, get mq.Error{unauthorized} (room)');

    // --- everyone stops; the server holds nothing ---
    // Alice's connection is not authenticated any more: no leave (it would be refused), just stop.
    const others = clients.filter((c) => c !== alice);
    const alicesSocket = alice.ownSockets().find((s) => s.closeCode === null);
    alice.pcast.stop('done');
    await waitFor('alice\'s socket to close', () => alicesSocket.closeCode !== null);
    assert.equal(alicesSocket.closeCode, 1000, 'alice closes her socket with 1000 byebye');

    for (const c of others.reverse()) {
        await c.stop();
    }

    await waitFor('the server to hold no connection or subscription', async () =>
        (await gauge(PORT, 'clientmq_connections_open')) === 0 && (await gauge(PORT, 'clientmq_subscriptions')) === 0);
    step('every client stops cleanly; the server holds no connection');
}

if (process.argv[2] === 'mint') {
    mint(process.argv.slice(3));
} else {
    harness().then(() => {
        console.log('ok - edge-auth harness passed');
        process.exit(0);
    }, (error) => {
        console.error('not ok - edge-auth harness failed:', error && error.stack ? error.stack : error);
        process.exit(1);
    });
}

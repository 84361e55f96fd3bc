// Drives the unmodified Phenix web SDK (Node build) against a running clientmq-server.
//
// Run by crates/server/tests/interop.rs, which starts the server and restarts it for the drain
// step. Environment: CLIENTMQ_PORT (required), CLIENTMQ_TOKEN (default "interop-token"),
// INTEROP_SDK_LOGS=1 to see the SDK's own log. For the drain step the harness prints a line
// "@@clientmq drain" and waits for "restarted" on stdin. Exits non-zero on the first failure.
'use strict';

const assert = require('node:assert/strict');
const http = require('node:http');
const readline = require('node:readline');

const PORT = Number(process.env.CLIENTMQ_PORT);
const TOKEN = process.env.CLIENTMQ_TOKEN || 'interop-token';
const SDK_LOGS = process.env.INTEROP_SDK_LOGS === '1';
const WAIT_MS = 10000;
const RECONNECT_WAIT_MS = 25000;
const WATCHDOG_MS = 55000;

assert.ok(PORT > 0, 'CLIENTMQ_PORT must name the port of a running clientmq-server');

function fail(error) {
    console.error('not ok - interop harness failed:', error && error.stack ? error.stack : error);
    process.exit(1);
}

process.on('uncaughtException', fail);
process.on('unhandledRejection', fail);
setTimeout(() => fail(new Error(`watchdog: the harness ran longer than ${WATCHDOG_MS} ms`)), WATCHDOG_MS).unref();

const sdk = require('phenix-web-sdk/dist/phenix-node-sdk.js');

// The SDK's Node build installs its bundled `ws` as global.WebSocket and creates every socket with
// `new WebSocket(uri)`. Subclassing it (without changing its behaviour) lets the harness see the
// close codes each client receives. Sockets made while `owner` is set are attributed to it.
const SdkWebSocket = global.WebSocket;
const sockets = [];
let owner = null;
global.WebSocket = class ObservedWebSocket extends SdkWebSocket {
    constructor(...args) {
        super(...args);
        const record = {owner, closeCode: null, ws: this};
        sockets.push(record);
        // A raw emitter listener: the bundled ws 7 drops every addEventListener listener when
        // the SDK assigns `onclose`.
        this.on('close', (code) => {
            record.closeCode = code;
        });
    }
};

function step(name) {
    console.log(`ok - ${name}`);
}

async function waitFor(what, condition, timeoutMs = WAIT_MS) {
    const deadline = Date.now() + timeoutMs;

    for (;;) {
        const value = await condition();

        if (value) {
            return value;
        }

        if (Date.now() > deadline) {
            throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
        }

        await new Promise((resolve) => setTimeout(resolve, 25));
    }
}

// Wraps an SDK callback API in a promise with a timeout.
function call(what, start, timeoutMs = WAIT_MS) {
    return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms: ${what}`)), timeoutMs);

        start((error, response) => {
            clearTimeout(timer);

            if (error) {
                reject(new Error(`${what} failed: ${JSON.stringify(error)}`));
            } else {
                resolve(response);
            }
        });
    });
}

function metrics() {
    return new Promise((resolve) => {
        const req = http.get({host: '127.0.0.1', port: PORT, path: '/metrics', timeout: 2000}, (res) => {
            let body = '';
            res.on('data', (chunk) => {
                body += chunk;
            });
            res.on('end', () => resolve(body));
        });
        req.on('error', () => resolve(''));
        req.on('timeout', () => req.destroy());
    });
}

async function gauge(name) {
    const line = (await metrics()).split('\n').find((l) => l.startsWith(`${name} `));

    return line === undefined ? NaN : Number(line.split(' ')[1]);
}

class Client {
    constructor(name) {
        this.name = name;
        this.pcast = new sdk.lowLevel.PCast({
            uri: `ws://127.0.0.1:${PORT}`,
            disableConsoleLogging: !SDK_LOGS,
            disableMultiplePCastInstanceWarning: true,
            disableGlobalErrorListener: true
        });
    }

    async start() {
        const authenticated = new Promise((resolve) => {
            owner = this.name;

            try {
                this.pcast.start(TOKEN, (pcast, status, sessionId) => resolve({status, sessionId}), () => {}, () => {});
            } finally {
                owner = null;
            }
        });
        const {status, sessionId} = await waitFor(`${this.name} to authenticate`, () => Promise.race([
            authenticated,
            new Promise((resolve) => setTimeout(() => resolve(null), 100))
        ]));

        assert.equal(status, 'ok', `${this.name} authenticates`);
        assert.ok(sessionId, `${this.name} gets a session id`);
        this.sessionId = sessionId;
        this.rooms = new sdk.lowLevel.RoomService(this.pcast);
        this.rooms.start('Participant', this.name);
    }

    ownSockets() {
        return sockets.filter((s) => s.owner === this.name);
    }

    memberIds() {
        const room = this.rooms.getObservableActiveRoom().getValue();

        return room ? room.getObservableMembers().getValue().map((m) => m.getSessionId()).sort() : [];
    }

    async enter(roomId, alias) {
        const response = await call(`${this.name} enters the room`, (cb) => this.rooms.enterRoom(roomId, alias, cb));

        assert.equal(response.status, 'ok', `${this.name} enters the room`);

        return response.room;
    }

    messages() {
        return this.rooms.getChatService().getObservableChatMessages().getValue()
            .map((m) => `${m.from.screenName}: ${m.message}`);
    }

    // Reconnect sockets cannot be attributed to a client, so stop one client at a time: exactly
    // one socket that was open must close, with 1000 byebye.
    async stop() {
        if (this.rooms.isInRoom()) {
            await call(`${this.name} leaves on stop`, (cb) => this.rooms.leaveRoom(cb, false));
        }

        const open = sockets.filter((s) => s.closeCode === null);
        this.rooms.stop('done');
        this.pcast.stop('done');
        await waitFor(`${this.name}'s socket to close`, () => open.some((s) => s.closeCode !== null));
        await new Promise((resolve) => setTimeout(resolve, 50));
        const closed = open.filter((s) => s.closeCode !== null).map((s) => s.closeCode);
        assert.deepEqual(closed, [1000], `${this.name} closes its one socket with 1000 byebye`);
    }
}

async function roomsAndChat() {
    const alice = new Client('alice');
    const bob = new Client('bob');
    await alice.start();
    await bob.start();
    assert.notEqual(alice.sessionId, bob.sessionId);
    step('two SDK clients authenticate with distinct session ids');

    const alias = `interop-${process.pid}`;
    const created = await call('alice creates a room', (cb) => alice.rooms.createRoom({
        name: 'Interop room',
        description: 'created by the clientmq interop harness',
        type: 'MultiPartyChat',
        alias
    }, cb));
    assert.equal(created.status, 'ok');
    const roomId = created.room.getRoomId();
    assert.ok(roomId, 'the server assigns a room id');
    const again = await call('bob creates the same alias', (cb) => bob.rooms.createRoom({
        name: 'Duplicate', description: 'same alias', type: 'MultiPartyChat', alias
    }, cb));
    assert.equal(again.status, 'already-exists');
    assert.equal(again.room.getRoomId(), roomId);
    step('alice creates a room; its alias is then taken');

    await alice.enter(roomId, null);
    const bobsRoom = await bob.enter(null, alias);
    assert.equal(bobsRoom.getRoomId(), roomId, 'entering by alias finds the room');
    const both = [alice.sessionId, bob.sessionId].sort();
    await waitFor('alice to see bob join', () => alice.memberIds().join() === both.join());
    await waitFor('bob to see alice in the room', () => bob.memberIds().join() === both.join());
    step('both enter the room and each sees the other');

    // A batch size, so that a re-subscription after a reconnect reloads the history.
    alice.rooms.getChatService().start(20);
    bob.rooms.getChatService().start(20);
    // Two rooms and two conversations subscribed at the gateway: both subscriptions are answered.
    await waitFor('both chat subscriptions at the gateway', async () => (await gauge('clientmq_subscriptions')) === 4);
    const sent = [];
    const exchange = async (round) => {
        for (const client of [alice, bob]) {
            const text = `message ${round} from ${client.name}`;
            const response = await call(`${client.name} sends`, (cb) => client.rooms.getChatService().sendMessageToRoom(text, cb));
            assert.equal(response.status, 'ok');
            sent.push(`${client.name}: ${text}`);
        }

        for (const client of [alice, bob]) {
            await waitFor(`${client.name} to receive every message`, () => client.messages().length >= sent.length);
            assert.deepEqual(client.messages(), sent, `${client.name} sees every message once, in order`);
        }
    };

    for (let round = 1; round <= 3; round++) {
        await exchange(round);
    }

    step('chat messages go both ways and arrive in order');

    // Alice's transport dies without a close frame; the SDK reconnects and re-authenticates with
    // its session id, which the server resumes within the grace period: same id, rooms kept.
    alice.ownSockets()[0].ws.terminate();
    await waitFor('alice to reconnect', () => alice.ownSockets()[0].closeCode !== null);
    await waitFor('alice to resume her session', () => alice.pcast.getStatus() === 'online');
    assert.equal(alice.pcast.getProtocol().getSessionId(), alice.sessionId, 'the session is resumed, not replaced');
    // The SDK re-enters the room and re-subscribes its chat on the new connection.
    await waitFor('alice\'s new connection to be subscribed again', async () =>
        (await gauge('clientmq_connections_open')) === 2 && (await gauge('clientmq_subscriptions')) === 4);
    assert.equal(bob.memberIds().join(), both.join(), 'bob still sees alice in the room');
    await exchange(4);
    step('a dropped transport resumes the same session and room; chat goes on');

    const left = await call('bob leaves', (cb) => bob.rooms.leaveRoom(cb, false));
    assert.equal(left.status, 'ok');
    await waitFor('alice to see bob leave', () => alice.memberIds().join() === alice.sessionId);
    step('bob leaves and alice sees it');

    await bob.stop();
    await alice.stop();
    await waitFor('the server to hold no connection or subscription', async () =>
        (await gauge('clientmq_connections_open')) === 0 && (await gauge('clientmq_subscriptions')) === 0);
    step('both stop cleanly; the server holds nothing for them');
}

function waitForRestart() {
    const lines = readline.createInterface({input: process.stdin});

    return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('no "restarted" on stdin in time')), RECONNECT_WAIT_MS);

        lines.on('line', (line) => {
            if (line.trim() === 'restarted') {
                clearTimeout(timer);
                lines.close();
                resolve();
            }
        });
        console.log('@@clientmq drain');
    });
}

async function drainAndReconnect() {
    const carol = new Client('carol');
    const dave = new Client('dave');
    await carol.start();
    await dave.start();
    const before = {carol: carol.sessionId, dave: dave.sessionId};
    step('two fresh SDK clients authenticate');

    await waitForRestart();

    for (const client of [carol, dave]) {
        await waitFor(`${client.name} to see the drain close`, () => client.ownSockets()[0].closeCode !== null);
        assert.equal(client.ownSockets()[0].closeCode, 3333, `${client.name}'s socket is closed with 3333 drain`);
    }

    step('the server drains and both SDK clients see 3333');

    for (const client of [carol, dave]) {
        await waitFor(`${client.name} to reconnect and re-authenticate`, () => {
            const sessionId = client.pcast.getProtocol().getSessionId();

            return client.pcast.getStatus() === 'online' && sessionId && sessionId !== before[client.name];
        }, RECONNECT_WAIT_MS);
    }

    // The restarted process knows no earlier session, so each client was issued a new one.
    await waitFor('two connections at the restarted server', async () => (await gauge('clientmq_connections_open')) === 2);
    step('both reconnect to the restarted server and re-authenticate');

    for (const client of [carol, dave]) {
        client.pcast.stop('done');
    }

    await waitFor('the restarted server to hold no connection', async () => (await gauge('clientmq_connections_open')) === 0);
    step('both stop cleanly after the reconnect');
}

(async () => {
    await roomsAndChat();
    await drainAndReconnect();
    console.log('ok - interop harness passed');
    process.exit(0);
})().catch(fail);

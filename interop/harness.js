// Drives the unmodified Phenix web SDK (Node build) against a running clientmq-server.
//
// Run by crates/server/tests/interop.rs, which starts the server and restarts it for the drain
// step. Environment: CLIENTMQ_PORT (required), CLIENTMQ_TOKEN (default "interop-token"),
// INTEROP_SDK_LOGS=1 to see the SDK's own log. For the drain step the harness prints a line
// "@@clientmq drain" and waits for "restarted" on stdin. Exits non-zero on the first failure.
'use strict';

const assert = require('node:assert/strict');

const {Client: SdkClient, ask, call, fail, gauge: gaugeOf, step, waitFor} = require('./sdk.js');

const PORT = Number(process.env.CLIENTMQ_PORT);
const TOKEN = process.env.CLIENTMQ_TOKEN || 'interop-token';
const RECONNECT_WAIT_MS = 25000;
const WATCHDOG_MS = 55000;

assert.ok(PORT > 0, 'CLIENTMQ_PORT must name the port of a running clientmq-server');

setTimeout(() => fail(new Error(`watchdog: the harness ran longer than ${WATCHDOG_MS} ms`)), WATCHDOG_MS).unref();

class Client extends SdkClient {
    constructor(name) {
        super(name, PORT, TOKEN);
    }
}

function gauge(name) {
    return gaugeOf(PORT, name);
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
    return ask('drain', 'restarted', RECONNECT_WAIT_MS);
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

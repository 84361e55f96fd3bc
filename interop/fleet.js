// Drives the unmodified Phenix web SDK against two clientmq gateways and one clientmq-chat
// worker on a NATS bus. Run by crates/server/tests/fleet.rs, which starts the processes, a
// switchable TCP proxy (a load balancer's stand-in) and performs the faults the harness asks for:
//
//   @@clientmq kill-gw1   SIGKILL gateway 1 and point the proxy at gateway 2; answer "done"
//   @@clientmq stop-nats  stop nats-server, check requests fail fast, start it again; "done"
//
// Environment: CLIENTMQ_GW1_PORT, CLIENTMQ_GW2_PORT, CLIENTMQ_PROXY_PORT (in front of gateway 1,
// later 2), CLIENTMQ_TOKEN, CLIENTMQ_GRACE_MS (the worker's session grace period).
'use strict';

const assert = require('node:assert/strict');

const {Client, ask, chatRound, fail, gauge, step, waitFor} = require('./sdk.js');

const GW1 = Number(process.env.CLIENTMQ_GW1_PORT);
const GW2 = Number(process.env.CLIENTMQ_GW2_PORT);
const PROXY = Number(process.env.CLIENTMQ_PROXY_PORT);
const TOKEN = process.env.CLIENTMQ_TOKEN;
const GRACE_MS = Number(process.env.CLIENTMQ_GRACE_MS);
// Workers count a silent gateway gone after 5 s without its 1 s announcements (docs/nats.md).
const GONE_MS = 6000;
const WATCHDOG_MS = 100000;

assert.ok(GW1 > 0 && GW2 > 0 && PROXY > 0 && TOKEN && GRACE_MS > 0, 'the test sets the environment');
setTimeout(() => fail(new Error(`watchdog: the harness ran longer than ${WATCHDOG_MS} ms`)), WATCHDOG_MS).unref();

async function main() {
    // Alice reaches gateway 1 through the proxy, Carol directly; Bob is on gateway 2.
    const alice = new Client('alice', PROXY, TOKEN);
    const bob = new Client('bob', GW2, TOKEN);
    const carol = new Client('carol', GW1, TOKEN);

    for (const client of [alice, bob, carol]) {
        await client.start();
    }

    await waitFor('two connections on gateway 1 and one on gateway 2', async () =>
        (await gauge(GW1, 'clientmq_connections_open')) === 2 && (await gauge(GW2, 'clientmq_connections_open')) === 1);
    step('three SDK clients authenticate through two gateways');

    const alias = `fleet-${process.pid}`;
    const roomId = await alice.createRoom('Fleet room', alias);
    await alice.enter(roomId, null);
    await bob.enter(null, alias);
    await carol.enter(roomId, null);
    const all = [alice.sessionId, bob.sessionId, carol.sessionId].sort();

    for (const client of [alice, bob, carol]) {
        await waitFor(`${client.name} to see all three members`, () => client.memberIds().join() === all.join());
    }

    step('all three enter one room through two gateways; each sees the others join');

    for (const client of [alice, bob, carol]) {
        client.rooms.getChatService().start(50);
    }

    // Each gateway holds its members' room and conversation subscriptions.
    await waitFor('chat subscriptions on both gateways', async () =>
        (await gauge(GW1, 'clientmq_subscriptions')) === 4 && (await gauge(GW2, 'clientmq_subscriptions')) === 2);
    const sent = [];
    await chatRound([alice, bob], sent, 1);
    await chatRound([bob, alice], sent, 2);
    await waitFor('carol to see the same conversation', () => carol.messages().join('\n') === sent.join('\n'));
    step('chat goes both ways between the gateways, in order');

    // Gateway 1 is killed. Alice's SDK reconnects through the proxy, now to gateway 2, and
    // resumes her session within the grace period; Carol's cannot reconnect, so her session ends
    // once the worker counts gateway 1 gone and her grace period is over.
    await ask('kill-gw1', 'done', 10000);
    const killedAt = Date.now();
    await waitFor('alice to resume her session through gateway 2', () =>
        alice.online() && alice.currentSessionId() === alice.sessionId, GRACE_MS);
    step('alice resumes her session through the other gateway within the grace period');

    let aliceMissing = false;
    const watchAlice = setInterval(() => {
        aliceMissing = aliceMissing || !bob.memberIds().includes(alice.sessionId);
    }, 25);
    await waitFor('bob to see carol leave', () => !bob.memberIds().includes(carol.sessionId), GONE_MS + GRACE_MS + 10000);
    const leftAfter = Date.now() - killedAt;
    clearInterval(watchAlice);
    assert.ok(leftAfter >= GRACE_MS, `carol left ${leftAfter} ms after the kill, not before her grace period`);
    assert.ok(!aliceMissing, 'bob never saw alice leave: she resumed in time');
    assert.deepEqual(bob.memberIds(), [alice.sessionId, bob.sessionId].sort());
    step(`bob sees carol leave ${leftAfter} ms after her gateway died, and never sees alice leave`);

    await waitFor('alice and bob on gateway 2', async () => (await gauge(GW2, 'clientmq_connections_open')) === 2);
    await chatRound([alice, bob], sent, 3);
    step('chat goes on after the resume');

    // The bus goes away and comes back; the test checks requests fail fast meanwhile, and that
    // the worker answers again before it says done.
    await ask('stop-nats', 'done', 30000);
    await chatRound([alice, bob], sent, 4);
    step('after the bus restarts, chat works again, in order');

    await bob.stop();
    await alice.stop();
    await waitFor('gateway 2 to hold nothing', async () =>
        (await gauge(GW2, 'clientmq_connections_open')) === 0 && (await gauge(GW2, 'clientmq_subscriptions')) === 0);
    step('both stop cleanly; gateway 2 holds no connection or subscription');
    console.log(`@@clientmq room ${alias}`);
}

main().then(() => {
    console.log('ok - fleet harness passed');
    process.exit(0);
}, fail);

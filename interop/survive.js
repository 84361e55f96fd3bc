// Drives the unmodified Phenix web SDK through the death of one process of a fleet whose workers
// keep everything in the store (clientmq-chat's default). Run by crates/server/tests/survive.rs,
// which starts the processes and performs the fault the harness asks for:
//
//   @@clientmq fault   kill the process the test is about (and start what it restarts), wait
//                      until the fleet writes to the store again; answer "done"
//
// With CLIENTMQ_CHAT_THROUGH_FAULT set (a rolling restart), alice and bob take turns sending
// through the fault, and every send must be answered ok.
//
// Afterwards: the same sessions (nobody re-authenticates), nobody ever saw a member leave, chat
// goes on both ways, and a newcomer finds the room by alias with its members and every message;
// then the newcomer ends its session with pcast.Bye from inside the room, its socket left open,
// and the others see it leave while its gateway stops carrying the room to it.
//
// Environment: CLIENTMQ_GW1_PORT, CLIENTMQ_GW2_PORT, CLIENTMQ_TOKEN.
'use strict';

const assert = require('node:assert/strict');

const {Client, ask, chatRound, fail, gauge, sleep, step, waitFor} = require('./sdk.js');

const GW1 = Number(process.env.CLIENTMQ_GW1_PORT);
const GW2 = Number(process.env.CLIENTMQ_GW2_PORT);
const TOKEN = process.env.CLIENTMQ_TOKEN;
const THROUGH_FAULT = Boolean(process.env.CLIENTMQ_CHAT_THROUGH_FAULT);
const WATCHDOG_MS = 120000;

assert.ok(GW1 > 0 && GW2 > 0 && TOKEN, 'the test sets the environment');
setTimeout(() => fail(new Error(`watchdog: the harness ran longer than ${WATCHDOG_MS} ms`)), WATCHDOG_MS).unref();

async function main() {
    const alice = new Client('alice', GW1, TOKEN);
    const bob = new Client('bob', GW2, TOKEN);

    for (const client of [alice, bob]) {
        await client.start();
    }

    const alias = `survive-${process.pid}`;
    const roomId = await alice.createRoom('Survivors', alias);
    await alice.enter(roomId, null);
    await bob.enter(null, alias);
    const both = [alice.sessionId, bob.sessionId].sort();

    for (const client of [alice, bob]) {
        await waitFor(`${client.name} to see both members`, () => client.memberIds().join() === both.join());
        client.rooms.getChatService().start(50);
    }

    // Each gateway holds its member's room and conversation subscriptions before anyone chats.
    await waitFor('chat subscriptions on both gateways', async () =>
        (await gauge(GW1, 'clientmq_subscriptions')) === 2 && (await gauge(GW2, 'clientmq_subscriptions')) === 2);
    const sent = [];
    await chatRound([alice, bob], sent, 1);
    await chatRound([bob, alice], sent, 2);
    step('two SDK clients on two gateways share a room by alias and chat');

    let someoneLeft = false;
    const watch = setInterval(() => {
        someoneLeft = someoneLeft || [alice, bob].some((c) => c.memberIds().join() !== both.join());
    }, 25);
    let faultDone = false;
    const fault = ask('fault', 'done', 90000).then(() => {
        faultDone = true;
    });
    if (THROUGH_FAULT) {
        // Turns, each send answered before the next: the room's order is the order sent. Paced
        // well under the gateway's request rate, and at most 40, so that the whole conversation
        // stays within what the SDK keeps (100 messages).
        let n = 0;
        while (!faultDone && n < 40) {
            await sleep(100);
            const client = [alice, bob][n % 2];
            const text = `during the fault, ${n}`;
            await client.send(text);
            sent.push(`${client.name}: ${text}`);
            n += 1;
        }
        assert.ok(n >= 10, `chat flowed through the fault (${n} sends)`);
        step(`${n} sends during the fault, each answered ok`);
    }
    await fault;
    await chatRound([alice, bob], sent, 3);
    await chatRound([bob, alice], sent, 4);
    clearInterval(watch);
    step('after the fault, chat goes on both ways, every message once and in order');

    assert.equal(alice.currentSessionId(), alice.sessionId, 'alice keeps her session');
    assert.equal(bob.currentSessionId(), bob.sessionId, 'bob keeps his session');
    assert.ok(!someoneLeft, 'nobody ever saw a member leave');
    step('the same sessions, and nobody saw a member leave');

    const dave = new Client('dave', GW1, TOKEN);
    await dave.start();
    await dave.enter(null, alias);
    const all = [alice.sessionId, bob.sessionId, dave.sessionId].sort();
    await waitFor('dave to see all three members', () => dave.memberIds().join() === all.join());
    dave.rooms.getChatService().start(50);
    await waitFor('dave to load the conversation', () => dave.messages().length >= sent.length);
    assert.deepEqual(dave.messages(), sent, 'a newcomer finds every message, once, in order');
    step('a newcomer finds the room by alias with its members and its whole conversation');

    // dave ends his session with Bye from inside the room and keeps his socket open: alice and
    // bob see him leave, and his gateway stops carrying the room to him.
    await dave.bye();
    await waitFor('alice and bob to see dave leave', () =>
        [alice, bob].every((c) => c.memberIds().join() === both.join()));
    await waitFor('dave\'s subscriptions gone from his gateway', async () =>
        (await gauge(GW1, 'clientmq_subscriptions')) === 2);
    step('a session that says Bye in a room leaves it for everyone, its socket still open');

    for (const client of [bob, alice]) {
        await client.stop();
    }
    await dave.stop(false);
}

main().then(() => {
    console.log('ok - survive harness passed');
    process.exit(0);
}, fail);

// Throws thousands of random and mutated startup-phase inputs at a running pgbranch while
// well-behaved clients keep working through it, then checks that the proxy is alive, still
// serving, and holds no more file descriptors than before. Every answer it gives must be well
// formed. FUZZ_SEED=<n> replays a run; FUZZ_CASES=<n> changes its size.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, queryOnce } from './support/clients.js';
import { startPgbranch, type PgbranchProcess } from './support/pgbranch.js';

const SEED = Number(process.env.FUZZ_SEED ?? randomBytes(4).readUInt32BE(0));
const CASES = Number(process.env.FUZZ_CASES ?? 10_000);
const IN_FLIGHT = 50;
/** How long a connection may stay open after the client stopped sending before it counts as stuck. */
const CLOSE_WAIT_MS = 3_000;
/** For inputs the proxy may well wait on: how long a quiet connection is kept before the client leaves. */
const QUIET_MS = 150;
/**
 * Clients that flood the startup phase at once, how soon all of them must have had their error, and
 * how soon the proxy must have closed them (it gives a client 5 s to read the error and leave).
 */
const FLOODERS = 100;
const FLOOD_REFUSED_WITHIN_MS = 5_000;
const FLOOD_CLOSED_WITHIN_MS = 15_000;
/** Descriptors the proxy may legitimately gain meanwhile (its catalog pool grows to 4 connections). */
const FD_SLACK = 8;

const SSL_REQUEST = 80877103;
const GSSENC_REQUEST = 80877104;
const CANCEL_REQUEST = 80877102;
const PROTOCOL_3_0 = 0x30000;
const PROTOCOL_3_2 = 0x30002;
const MAX_STARTUP_PACKET = 10_000;

/**
 * What a case may expect besides a SQLSTATE, as PostgreSQL answers: nothing at all before the
 * proxy closes (where it reports COMMERROR, only to its log), or an error in protocol 2's form
 * (for a client that asked for a protocol older than 3).
 */
const SILENT = 'a close without an answer';
const LEGACY = 'a protocol 2 error';

/** The only SQLSTATEs a client that never authenticates may see. */
const STARTUP_CODES = new Set([
  '08P01', // protocol violation
  '28000', // no user name
  '28P01', // authentication failed
  '0A000', // feature not supported
  '3D000', // invalid database name
  '42602', // invalid branch name
  '42704', // unknown pgbranch.* option
  '55000', // a restore point's name (app@x:point), which takes no connections
  '53300', // too many clients
]);

let proxy: PgbranchProcess;

beforeAll(async () => {
  // The fuzzer sends wrong SCRAM proofs by the thousand from one address, on purpose.
  proxy = await startPgbranch({ args: ['--auth-max-failures', '0'] });
});

afterAll(async () => {
  await proxy?.stop();
});

describe('the startup phase under hostile input', () => {
  it('answers every malformed, truncated or lying input with at most a well-formed error, and keeps serving', async () => {
    console.log(`fuzz-startup: seed ${SEED} (FUZZ_SEED=${SEED} to replay), ${CASES} cases`);
    const pid = proxy.child.pid!;
    const url = proxy.url('postgres');
    await warmUp(url);
    const fdsBefore = await settledFdCount(pid, Infinity);

    const good = startGoodClients(url);
    const cases = generateCases(new Random(SEED), CASES);
    const started = Date.now();
    const outcomes = await runAll(proxy.port, cases, IN_FLIGHT);
    const elapsed = Date.now() - started;
    const goodResult = await good.stop();

    const problems: string[] = [];
    const codes = new Map<string, number>();
    let answered = 0;
    let silent = 0;
    for (const [i, outcome] of outcomes.entries()) {
      const c = cases[i]!;
      const report = (what: string) =>
        problems.push(`case ${i} (${c.name}, ${c.ending}): ${what}; input ${describeInput(c)}`);
      if (outcome.stuck) report('the proxy neither answered nor closed the connection');
      const reply = readReply(outcome.received);
      if (outcome.received.length === 0 && outcome.closedByProxy) silent++;
      for (const problem of reply.problems) report(problem);
      if (reply.error) {
        answered++;
        codes.set(reply.error.code, (codes.get(reply.error.code) ?? 0) + 1);
        if (!STARTUP_CODES.has(reply.error.code)) {
          report(`unexpected SQLSTATE ${reply.error.code}: ${reply.error.message}`);
        }
      }
      if (c.expect && c.ending === 'linger') {
        const got = reply.error
          ? reply.error.code
          : reply.legacyError !== undefined
            ? LEGACY
            : outcome.received.length === 0 && outcome.closedByProxy
              ? SILENT
              : 'no error';
        if (got !== c.expect) {
          report(
            `expected ${c.expect}, got ${reply.error ? `${reply.error.code} ${reply.error.message}` : got}`,
          );
        }
      }
    }
    console.log(
      `fuzz-startup: ${cases.length} connections in ${elapsed} ms, ${answered} ErrorResponses ` +
        `(${[...codes].map(([code, n]) => `${code}: ${n}`).join(', ')}), ` +
        `${silent} closed without an answer, ` +
        `${goodResult.connects} good connects (slowest ${goodResult.slowest} ms) and ` +
        `${goodResult.queries} queries alongside`,
    );
    expect(problems.slice(0, 20)).toEqual([]);
    expect(goodResult.failures).toEqual([]);
    expect(goodResult.connects).toBeGreaterThan(10);

    expect(proxy.child.exitCode).toBeNull();
    expect(proxy.child.signalCode).toBeNull();
    expect(await queryOnce(url, 'select 1 as one')).toEqual([{ one: 1 }]);
    const fdsAfter = await settledFdCount(pid, fdsBefore + FD_SLACK);
    console.log(`fuzz-startup: proxy file descriptors ${fdsBefore} before, ${fdsAfter} after`);
    expect(fdsAfter).toBeLessThanOrEqual(fdsBefore + FD_SLACK);
    expect(proxy.events('client_refused').filter((e) => e.code === 'XX000')).toEqual([]);
  }, 120_000);

  it('refuses clients that flood it with megabytes after their startup packet promptly, without buffering it all', async () => {
    const pid = proxy.child.pid!;
    const peakBefore = memoryMb(pid, 'VmHWM');
    const startup = startupPacket(
      PROTOCOL_3_0,
      Buffer.concat([pair('user', 'postgres'), pair('database', 'postgres'), Buffer.alloc(1)]),
    );
    const results = await Promise.all(
      Array.from({ length: FLOODERS }, () => floodAfter(proxy.port, startup)),
    );
    const slowest = Math.max(...results.map((r) => r.refusedAfterMs));
    const lastClosed = Math.max(...results.map((r) => r.closedAfterMs));
    const peakAfter = memoryMb(pid, 'VmHWM');
    console.log(
      `fuzz-startup: ${FLOODERS} clients flooding, all refused within ${slowest} ms and closed within ${lastClosed} ms; ` +
        `peak memory ${peakBefore} MB before, ${peakAfter} MB after`,
    );
    expect(results.filter((r) => r.code !== '08P01')).toEqual([]);
    expect(slowest).toBeLessThan(FLOOD_REFUSED_WITHIN_MS);
    expect(lastClosed).toBeLessThan(FLOOD_CLOSED_WITHIN_MS);
    expect(peakAfter - peakBefore).toBeLessThan(100);
    expect(await queryOnce(proxy.url('postgres'), 'select 1 as one')).toEqual([{ one: 1 }]);
  }, 60_000);
});

// --- Inputs -------------------------------------------------------------------------------------

/**
 * Bytes to send, a pause in milliseconds, a flood of this many bytes sent as fast as the proxy
 * takes them, a wait until the proxy has sent this many bytes in all (the answers to encryption
 * requests, which a client must wait for), or a reply to the server's SASL challenge (built from
 * its server-first-message once that has come).
 */
type Step =
  Buffer | number | { flood: number } | { answered: number } | ((serverFirst: string) => Buffer);

/**
 * What the client does once its input is sent: `linger` waits for the proxy to answer and close
 * (or to go quiet) before half-closing, as a real client would; `end` half-closes at once;
 * `destroy` drops the connection at once.
 */
type Ending = 'linger' | 'end' | 'destroy';

interface FuzzCase {
  name: string;
  steps: Step[];
  ending: Ending;
  /** The SQLSTATE (or SILENT, LEGACY) the proxy must answer with when the client waits for it. */
  expect?: string;
}

function generateCases(rng: Random, count: number): FuzzCase[] {
  const generators: [number, (rng: Random) => Omit<FuzzCase, 'ending'>][] = [
    [10, randomInput],
    [25, mutatedStartup],
    [10, lyingLength],
    [12, malformedStartup],
    [15, encryptionAndCancel],
    [25, badAuthentication],
    [5, partialPacket],
    [3, silence],
    [1, floodInput],
  ];
  const total = generators.reduce((sum, [weight]) => sum + weight, 0);
  const cases: FuzzCase[] = [];
  for (let i = 0; i < count; i++) {
    let roll = rng.int(total);
    const generate = generators.find(([weight]) => (roll -= weight) < 0)![1];
    const ending = rng.pick<Ending>(['linger', 'linger', 'linger', 'end', 'end', 'destroy']);
    cases.push({ ...generate(rng), ending });
  }
  return cases;
}

function randomInput(rng: Random): Omit<FuzzCase, 'ending'> {
  const size = rng.chance(0.1) ? rng.int(12_000) : rng.int(64);
  return { name: 'random bytes', steps: [rng.bytes(size)] };
}

function mutatedStartup(rng: Random): Omit<FuzzCase, 'ending'> {
  let bytes = validStartup(rng);
  const mutations = 1 + rng.int(4);
  const names: string[] = [];
  for (let m = 0; m < mutations; m++) {
    const at = rng.int(bytes.length);
    switch (rng.int(6)) {
      case 0:
        bytes[at] = bytes[at]! ^ (1 << rng.int(8));
        names.push('bit flip');
        break;
      case 1:
        bytes[at] = rng.int(256);
        names.push('byte');
        break;
      case 2:
        bytes = bytes.subarray(0, at);
        names.push('truncated');
        break;
      case 3:
        bytes = Buffer.concat([
          bytes.subarray(0, at),
          rng.bytes(1 + rng.int(8)),
          bytes.subarray(at),
        ]);
        names.push('insertion');
        break;
      case 4:
        bytes = Buffer.concat([bytes.subarray(0, at), bytes.subarray(at + 1 + rng.int(8))]);
        names.push('deletion');
        break;
      default:
        bytes = Buffer.concat([bytes, rng.bytes(rng.int(32))]);
        names.push('trailing garbage');
    }
  }
  return { name: `startup with ${names.join(', ')}`, steps: [bytes] };
}

function lyingLength(rng: Random): Omit<FuzzCase, 'ending'> {
  const bytes = validStartup(rng);
  const lies: [string, number, string?][] = [
    // PostgreSQL's limit is on what follows the length word.
    ['too large', MAX_STARTUP_PACKET + 5 + rng.int(1 << 30), SILENT],
    ['maximum', MAX_STARTUP_PACKET + 4],
    ['larger', bytes.length + 1 + rng.int(100)],
    ['smaller', 8 + rng.int(bytes.length - 8)],
    ['below minimum', rng.int(8), SILENT],
    ['negative', -1 - rng.int(0x7fffffff), SILENT],
  ];
  const [lie, length, code] = rng.pick(lies);
  bytes.writeInt32BE(length, 0);
  return { name: `startup length ${lie} (${length})`, steps: [bytes], expect: code };
}

function malformedStartup(rng: Random): Omit<FuzzCase, 'ending'> {
  const user = pair('user', 'postgres');
  const kinds: (() => Omit<FuzzCase, 'ending'>)[] = [
    () => ({
      name: 'parameters without terminator',
      steps: [startupPacket(PROTOCOL_3_0, Buffer.concat([user, pair('database', 'postgres')]))],
      expect: '08P01',
    }),
    // At least 2 bytes: PostgreSQL reads a single byte there as the terminator (its layout check
    // only looks at where the last name starts), and then misses the user (28000).
    () => ({
      name: 'NUL-less parameters',
      steps: [startupPacket(PROTOCOL_3_0, rng.text(2 + rng.int(199)))],
      expect: '08P01',
    }),
    () => ({
      name: 'name without value',
      steps: [startupPacket(PROTOCOL_3_0, Buffer.concat([user, Buffer.from('database\0')]))],
      expect: '08P01',
    }),
    () => {
      // As many distinct parameters as fit in the largest packet PostgreSQL accepts.
      const params = [user];
      let size = 8 + user.length + 1;
      for (let i = 0; size + 14 < MAX_STARTUP_PACKET; i++) {
        const p = pair(`p${i}`, 'v');
        params.push(p);
        size += p.length;
      }
      const overflow = rng.chance(0.5);
      if (overflow) params.push(pair('x'.repeat(20), 'y'));
      return {
        name: `${params.length} parameters${overflow ? ', over the limit' : ''}`,
        steps: [startupPacket(PROTOCOL_3_0, Buffer.concat([...params, Buffer.alloc(1)]))],
        expect: overflow ? SILENT : undefined,
      };
    },
    // PostgreSQL takes the last value; so does the proxy, which then asks for a password.
    () => ({
      name: 'duplicate parameter',
      steps: [startupPacket(PROTOCOL_3_0, Buffer.concat([user, user, Buffer.alloc(1)]))],
    }),
    () => ({
      name: 'no user',
      steps: [startupPacket(PROTOCOL_3_0, Buffer.concat([pair('database', 'x'), Buffer.alloc(1)]))],
      expect: '28000',
    }),
    () => ({
      name: 'invalid UTF-8',
      steps: [
        startupPacket(
          PROTOCOL_3_0,
          Buffer.concat([Buffer.from('user\0'), Buffer.from([0xc3, 0x28, 0]), Buffer.alloc(1)]),
        ),
      ],
      expect: '08P01',
    }),
    () => {
      const major = rng.pick([0, 1, 2, 4, 1234, 0xffff]);
      const minor = rng.int(0x10000);
      return {
        name: `protocol ${major}.${minor}`,
        steps: [startupPacket((major << 16) | minor, Buffer.concat([user, Buffer.alloc(1)]))],
        expect: major < 3 ? LEGACY : '0A000',
      };
    },
    () => ({
      name: 'weird database name',
      steps: [
        startupPacket(
          rng.pick([PROTOCOL_3_0, PROTOCOL_3_2]),
          Buffer.concat([
            user,
            pair(
              'database',
              rng.pick(['@', '@x', 'a'.repeat(64), 'x@\x01', `x@${'b'.repeat(300)}`]),
            ),
            Buffer.alloc(1),
          ]),
        ),
      ],
    }),
    () => ({
      name: 'weird options',
      steps: [
        startupPacket(
          PROTOCOL_3_0,
          Buffer.concat([
            user,
            pair(
              'options',
              rng.pick([
                '-c pgbranch.nope=1',
                '-c pgbranch.branch=',
                '--pgbranch.parent=\x07',
                '-c pgbranch.branch=a\\',
                `-c pgbranch.branch=${'z'.repeat(300)}`,
                '-c',
                '\\',
              ]),
            ),
            Buffer.alloc(1),
          ]),
        ),
      ],
    }),
  ];
  return rng.pick(kinds)();
}

function encryptionAndCancel(rng: Random): Omit<FuzzCase, 'ending'> {
  const ssl = code8(SSL_REQUEST);
  const gss = code8(GSSENC_REQUEST);
  const kinds: (() => Omit<FuzzCase, 'ending'>)[] = [
    () => ({ name: 'SSLRequest', steps: [ssl] }),
    () => ({ name: 'GSSENCRequest', steps: [gss] }),
    () => {
      const noUser = startupPacket(
        PROTOCOL_3_0,
        Buffer.concat([pair('database', 'x'), Buffer.alloc(1)]),
      );
      const requests = rng.pick([[ssl], [gss], [gss, ssl], [ssl, gss]]);
      return {
        name: `${requests.length} encryption requests, then a startup without user`,
        // Each answer awaited, as clients do: bytes sent ahead of it are refused with 08P01.
        steps: [...requests.flatMap((request, i) => [request, { answered: i + 1 }]), noUser],
        expect: '28000',
      };
    },
    () => {
      // PostgreSQL takes one of each; more may be answered or refused, but must not break anything.
      const n = 3 + rng.int(50);
      return {
        name: `${n} encryption requests, then a startup`,
        steps: [
          ...Array.from({ length: n }, () => (rng.chance(0.5) ? ssl : gss)),
          validStartup(rng),
        ],
      };
    },
    // Answered N as PostgreSQL answers it, which ignores the body; then the proxy waits.
    () => ({
      name: 'SSLRequest with a body',
      steps: [startupPacket(SSL_REQUEST, rng.bytes(1 + rng.int(16)))],
    }),
    () => ({
      name: 'SSLRequest then random bytes',
      steps: [ssl, rng.bytes(1 + rng.int(64))],
    }),
    () => {
      // Valid (1 to 256 bytes) or not, a cancel request is never answered: PostgreSQL only logs
      // one of a wrong length.
      const secret = rng.pick([0, 1, 3, 4, 32, 256, 257, 1000]);
      return {
        name: `CancelRequest with a ${secret}-byte secret`,
        steps: [
          startupPacket(
            CANCEL_REQUEST,
            Buffer.concat([int32(rng.int(0x7fffffff)), rng.bytes(secret)]),
          ),
        ],
        expect: SILENT,
      };
    },
    () => ({
      name: 'CancelRequest then garbage',
      steps: [
        startupPacket(CANCEL_REQUEST, Buffer.concat([int32(rng.int(100_000)), rng.bytes(4)])),
        rng.bytes(1 + rng.int(64)),
      ],
    }),
    () => ({
      name: 'partial SSLRequest',
      steps: [ssl.subarray(0, 1 + rng.int(7))],
    }),
  ];
  return rng.pick(kinds)();
}

/** A valid startup, then something other than a correct SASL exchange. */
function badAuthentication(rng: Random): Omit<FuzzCase, 'ending'> {
  const startup = startupPacket(
    PROTOCOL_3_0,
    Buffer.concat([
      pair('user', rng.chance(0.7) ? 'postgres' : `nobody_${rng.int(1000)}`),
      pair('database', rng.pick(['postgres', 'app@feature'])),
      Buffer.alloc(1),
    ]),
  );
  const nonce = rng.text(8 + rng.int(24)).toString('latin1');
  const clientFirst = `n,,n=,r=${nonce}`;
  const kinds: (() => Omit<FuzzCase, 'ending'>)[] = [
    () => ({
      name: 'random SASLInitialResponse body',
      steps: [startup, message('p', rng.bytes(rng.int(200)))],
      expect: '08P01',
    }),
    () => ({
      name: 'wrong message type',
      steps: [startup, message(rng.pick(['Q', 'X', 'P', '\0', 'S']), rng.bytes(rng.int(20)))],
      expect: '08P01',
    }),
    () => {
      const mechanism = rng.pick([
        'SCRAM-SHA-256-PLUS',
        'PLAIN',
        '',
        'scram-sha-256',
        'SCRAM-SHA-1',
      ]);
      return {
        name: `mechanism "${mechanism}"`,
        steps: [startup, saslInitial(mechanism, Buffer.from(clientFirst))],
        expect: '08P01',
      };
    },
    () => {
      const length = rng.pick([-1, 0, clientFirst.length + 1, clientFirst.length - 1, 0x7fffffff]);
      return {
        name: `SASLInitialResponse data length ${length}`,
        steps: [startup, saslInitial('SCRAM-SHA-256', Buffer.from(clientFirst), length)],
        expect: '08P01',
      };
    },
    () => ({
      name: 'SASLInitialResponse without data length',
      steps: [startup, message('p', Buffer.from('SCRAM-SHA-256\0\0\0'))],
      expect: '08P01',
    }),
    () => {
      const length = rng.pick([-1, 0, 3, 10_001, 0x7fffffff]);
      const bytes = saslInitial('SCRAM-SHA-256', Buffer.from(clientFirst));
      bytes.writeInt32BE(length, 1);
      return {
        name: `SASLInitialResponse message length ${length}`,
        steps: [startup, bytes],
        expect: '08P01',
      };
    },
    () => ({
      name: 'SASLInitialResponse message length larger than sent',
      steps: [startup, saslInitial('SCRAM-SHA-256', Buffer.from(clientFirst)).subarray(0, -3)],
    }),
    () => {
      const first = rng.pick([
        `p=tls-server-end-point,,n=,r=${nonce}`,
        `n,a=someone,n=,r=${nonce}`,
        `n,,m=ext,n=,r=${nonce}`,
        'n,,n=,r=',
        `x,,n=,r=${nonce}`,
        `n,,n=,r=${nonce}\0`,
        'n,,',
        '',
        rng.bytes(40).toString('latin1'),
      ]);
      return {
        name: 'malformed client-first-message',
        steps: [startup, saslInitial('SCRAM-SHA-256', Buffer.from(first, 'latin1'))],
        expect: '08P01',
      };
    },
    () => {
      const proof = rng.bytes(32).toString('base64');
      const [variant, build, code]: [string, (serverFirst: string) => string, string] = rng.pick([
        ['a wrong proof', (s: string) => `c=biws,r=${serverNonce(s)},p=${proof}`, '28P01'],
        ['wrong channel binding', (s: string) => `c=eSws,r=${serverNonce(s)},p=${proof}`, '08P01'],
        ['wrong nonce', () => `c=biws,r=${nonce}x,p=${proof}`, '08P01'],
        ['a short proof', (s: string) => `c=biws,r=${serverNonce(s)},p=AAAA`, '08P01'],
        ['no proof', (s: string) => `c=biws,r=${serverNonce(s)}`, '08P01'],
        [
          'garbage after the proof',
          (s: string) => `c=biws,r=${serverNonce(s)},p=${proof},x=1`,
          '08P01',
        ],
        ['proof not base64', (s: string) => `c=biws,r=${serverNonce(s)},p=!!!`, '08P01'],
        ['an empty message', () => '', '08P01'],
      ]);
      return {
        name: `client-final-message with ${variant}`,
        steps: [
          startup,
          saslInitial('SCRAM-SHA-256', Buffer.from(clientFirst)),
          (serverFirst) => message('p', Buffer.from(build(serverFirst), 'latin1')),
        ],
        expect: code,
      };
    },
    () => ({
      name: 'random client-final-message',
      steps: [
        startup,
        saslInitial('SCRAM-SHA-256', Buffer.from(clientFirst)),
        () => message('p', rng.bytes(rng.int(100))),
      ],
    }),
    () => ({
      name: 'a second startup packet instead of SASL',
      steps: [startup, startup],
      expect: '08P01',
    }),
  ];
  return rng.pick(kinds)();
}

/** Part of a valid packet, a pause, then (by the ending) a close without the rest. */
function partialPacket(rng: Random): Omit<FuzzCase, 'ending'> {
  const sasl = rng.chance(0.5);
  const whole = sasl
    ? saslInitial('SCRAM-SHA-256', Buffer.from('n,,n=,r=abcdef'))
    : validStartup(rng);
  const cut = rng.int(whole.length);
  return {
    name: `${cut} of ${whole.length} bytes of a ${sasl ? 'SASLInitialResponse' : 'startup packet'}`,
    steps: [...(sasl ? [validStartup(rng)] : []), whole.subarray(0, cut), rng.int(50)],
  };
}

/** Megabytes where a few bytes are due: the proxy must neither buffer them all nor stall on them. */
function floodInput(rng: Random): Omit<FuzzCase, 'ending'> {
  const size = (1 + rng.int(8)) << 20;
  const after = rng.pick(['nothing', 'a startup packet', 'a startup packet and SASL header']);
  const steps: Step[] = [];
  if (after !== 'nothing') steps.push(validStartup(rng));
  if (after === 'a startup packet and SASL header') {
    steps.push(Buffer.from([0x70, 0, 0, 0x27, 0x10])); // 'p', 10,000 bytes long
  }
  steps.push({ flood: size });
  return { name: `${size >> 20} MB after ${after}`, steps };
}

function silence(rng: Random): Omit<FuzzCase, 'ending'> {
  return { name: 'nothing', steps: [20 + rng.int(300)] };
}

function validStartup(rng: Random): Buffer {
  const params = [pair('user', rng.pick(['postgres', 'alice', 'zoë']))];
  if (rng.chance(0.7)) {
    params.push(pair('database', rng.pick(['postgres', 'app', 'app@feature-x'])));
  }
  if (rng.chance(0.3)) params.push(pair('application_name', 'fuzz'));
  if (rng.chance(0.2)) params.push(pair('options', '-c pgbranch.branch=fuzz'));
  if (rng.chance(0.1)) params.push(pair('_pq_.fuzz', 'on'));
  return startupPacket(
    rng.pick([PROTOCOL_3_0, PROTOCOL_3_2]),
    Buffer.concat([...params, Buffer.alloc(1)]),
  );
}

// --- Wire helpers -------------------------------------------------------------------------------

function int32(value: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32BE(value | 0, 0);
  return b;
}

function startupPacket(code: number, body: Buffer): Buffer {
  return Buffer.concat([int32(8 + body.length), int32(code), body]);
}

function code8(code: number): Buffer {
  return startupPacket(code, Buffer.alloc(0));
}

function pair(name: string, value: string): Buffer {
  return Buffer.from(`${name}\0${value}\0`);
}

function message(type: string, body: Buffer): Buffer {
  return Buffer.concat([Buffer.from(type, 'latin1'), int32(4 + body.length), body]);
}

function saslInitial(mechanism: string, data: Buffer, length = data.length): Buffer {
  return message('p', Buffer.concat([Buffer.from(`${mechanism}\0`), int32(length), data]));
}

function serverNonce(serverFirst: string): string {
  return /^r=([^,]*)/.exec(serverFirst)?.[1] ?? '';
}

function describeInput(c: FuzzCase): string {
  return c.steps
    .map((step) =>
      typeof step === 'function'
        ? '<reply to SASL challenge>'
        : typeof step === 'number'
          ? `<${step} ms pause>`
          : 'flood' in step
            ? `<${step.flood} bytes>`
            : 'answered' in step
              ? `<wait for ${step.answered} bytes of answer>`
              : step.toString('hex'),
    )
    .map((s) => (s.length > 200 ? `${s.slice(0, 200)}...` : s))
    .join(' ');
}

// --- Running connections ------------------------------------------------------------------------

interface Outcome {
  received: Buffer;
  /** The proxy closed the connection before the client ended it. */
  closedByProxy: boolean;
  /** The connection was still open CLOSE_WAIT_MS after the client stopped sending. */
  stuck: boolean;
}

async function runAll(port: number, cases: FuzzCase[], inFlight: number): Promise<Outcome[]> {
  const outcomes: Outcome[] = new Array(cases.length);
  let next = 0;
  const worker = async () => {
    while (next < cases.length) {
      const i = next++;
      outcomes[i] = await runCase(port, cases[i]!);
    }
  };
  await Promise.all(Array.from({ length: inFlight }, worker));
  return outcomes;
}

async function runCase(port: number, c: FuzzCase): Promise<Outcome> {
  const socket = net.connect({ port, host: '127.0.0.1' });
  socket.setNoDelay(true);
  const chunks: Buffer[] = [];
  let onChange = () => {};
  let closed = false;
  socket.on('data', (chunk: Buffer) => {
    chunks.push(chunk);
    onChange();
  });
  socket.on('error', () => undefined);
  const closing = new Promise<void>((resolve) =>
    socket.once('close', () => {
      closed = true;
      onChange();
      resolve();
    }),
  );
  /** Resolves when `done()` holds, the connection closes, or after quietMs without news. */
  const waitFor = (done: () => boolean, quietMs: number) =>
    new Promise<void>((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const finish = () => {
        clearTimeout(timer);
        onChange = () => {};
        resolve();
      };
      onChange = () => {
        clearTimeout(timer);
        if (closed || done()) finish();
        else timer = setTimeout(finish, quietMs);
      };
      onChange();
    });

  await new Promise<void>((resolve) => {
    socket.once('connect', resolve);
    socket.once('close', resolve);
  });
  for (const step of c.steps) {
    if (closed) break;
    if (typeof step === 'number') {
      await sleep(step);
    } else if ('flood' in step) {
      await sendFlood(socket, step.flood);
    } else if ('answered' in step) {
      const enough = () => chunks.reduce((sum, chunk) => sum + chunk.length, 0) >= step.answered;
      await waitFor(enough, CLOSE_WAIT_MS);
      if (!enough()) break;
    } else if (typeof step === 'function') {
      await waitFor(() => saslChallenge(Buffer.concat(chunks)) !== undefined, CLOSE_WAIT_MS);
      const challenge = saslChallenge(Buffer.concat(chunks));
      if (challenge === undefined) break;
      await writeInPieces(socket, step(challenge));
    } else {
      await writeInPieces(socket, step);
    }
  }
  if (c.ending === 'destroy') {
    const closedByProxy = closed;
    socket.destroy();
    return { received: Buffer.concat(chunks), closedByProxy, stuck: false };
  }
  if (c.ending === 'linger') {
    // With an expected answer, wait for it (the proxy closes after an error); otherwise the proxy
    // may rightly be waiting for more, so leave once it has gone quiet.
    await waitFor(() => false, c.expect ? CLOSE_WAIT_MS : QUIET_MS);
  }
  const closedByProxy = closed;
  if (!closed) socket.end();
  const timer = setTimeout(() => socket.destroy(), CLOSE_WAIT_MS);
  const stuck = await Promise.race([closing.then(() => false), sleep(CLOSE_WAIT_MS, true)]);
  clearTimeout(timer);
  socket.destroy();
  return { received: Buffer.concat(chunks), closedByProxy, stuck };
}

const FLOOD_CHUNK = Buffer.alloc(64 * 1024, 0x70);

/**
 * Sends `size` bytes as fast as the proxy reads them. Stops early when the proxy closes the
 * connection or stops reading for CLOSE_WAIT_MS (it may rightly stop reading, but must then close).
 */
async function sendFlood(socket: net.Socket, size: number): Promise<void> {
  for (let sent = 0; sent < size && !socket.destroyed; sent += FLOOD_CHUNK.length) {
    if (socket.write(FLOOD_CHUNK)) continue;
    const drained = await new Promise<boolean>((resolve) => {
      const done = (result: boolean) => {
        clearTimeout(timer);
        socket.off('drain', onDrain);
        socket.off('close', onClose);
        resolve(result);
      };
      const onDrain = () => done(true);
      const onClose = () => done(false);
      const timer = setTimeout(() => done(false), CLOSE_WAIT_MS);
      socket.on('drain', onDrain);
      socket.on('close', onClose);
    });
    if (!drained) return;
  }
}

/** Writes `bytes` in up to four pieces, each in its own TCP segment, to exercise reassembly. */
async function writeInPieces(socket: net.Socket, bytes: Buffer): Promise<void> {
  // The split depends on the bytes only, so a seed replays it.
  const pieces = bytes.length < 2 ? 1 : 1 + (bytes[bytes.length >> 1]! % 4);
  if (pieces === 1) {
    socket.write(bytes);
    return;
  }
  const size = Math.ceil(bytes.length / pieces);
  for (let at = 0; at < bytes.length && !socket.destroyed; at += size) {
    socket.write(bytes.subarray(at, at + size));
    await sleep(1);
  }
}

// --- Reading replies ----------------------------------------------------------------------------

interface Reply {
  error?: { code: string; message: string };
  /** The text of an error in protocol 2's form. */
  legacyError?: string;
  problems: string[];
}

/**
 * Checks what the proxy sent a client that never authenticated: 'N' bytes refusing encryption,
 * then only Authentication ('R') and NegotiateProtocolVersion ('v') messages, and at most one
 * ErrorResponse, last, with severity, a 5-character SQLSTATE and a message; or, after the 'N'
 * bytes, only an error in protocol 2's form.
 */
function readReply(bytes: Buffer): Reply {
  const problems: string[] = [];
  let error: Reply['error'];
  let at = 0;
  while (at < bytes.length && bytes[at] === 0x4e) at++;
  // Protocol 2's error, for a client that asked for a protocol older than 3: 'E', a line, a zero.
  const legacy = /^E(FATAL: {2}[^\0\n]+)\n\0$/.exec(bytes.toString('latin1', at));
  if (legacy) return { legacyError: legacy[1], problems };
  while (at < bytes.length) {
    if (bytes.length - at < 5) {
      problems.push(
        `truncated message header at byte ${at}: ${bytes.subarray(at).toString('hex')}`,
      );
      break;
    }
    const type = String.fromCharCode(bytes[at]!);
    const length = bytes.readInt32BE(at + 1);
    if (length < 4 || at + 1 + length > bytes.length) {
      problems.push(
        `message '${type}' at byte ${at} has length ${length} of ${bytes.length - at - 1}`,
      );
      break;
    }
    const body = bytes.subarray(at + 5, at + 1 + length);
    at += 1 + length;
    if (error) problems.push(`message '${type}' after the ErrorResponse`);
    if (type === 'E') {
      const fields = errorFields(body);
      if (!fields) {
        problems.push(`malformed ErrorResponse ${body.toString('hex')}`);
        continue;
      }
      if (!/^[0-9A-Z]{5}$/.test(fields.C ?? '')) problems.push(`bad SQLSTATE "${fields.C}"`);
      if (!['FATAL', 'ERROR'].includes(fields.S ?? '') || fields.V !== fields.S) {
        problems.push(`bad severity ${fields.S}/${fields.V}`);
      }
      if (!fields.M) problems.push('ErrorResponse without a message');
      error = { code: fields.C ?? '', message: fields.M ?? '' };
    } else if (type === 'R') {
      const code = body.length >= 4 ? body.readInt32BE(0) : -1;
      if (![5, 10, 11].includes(code)) problems.push(`unexpected authentication request ${code}`);
    } else if (type !== 'v') {
      problems.push(`unexpected message '${type}' before authentication`);
    }
  }
  return { error, problems };
}

function errorFields(body: Buffer): Record<string, string> | undefined {
  const fields: Record<string, string> = {};
  let at = 0;
  for (;;) {
    if (at >= body.length) return undefined;
    const code = body[at]!;
    if (code === 0) return at === body.length - 1 ? fields : undefined;
    const end = body.indexOf(0, at + 1);
    if (end < 0) return undefined;
    fields[String.fromCharCode(code)] = body.toString('utf8', at + 1, end);
    at = end + 1;
  }
}

/** The server-first-message of an AuthenticationSASLContinue the proxy sent, once it has. */
function saslChallenge(bytes: Buffer): string | undefined {
  let at = 0;
  while (at < bytes.length && bytes[at] === 0x4e) at++;
  while (at + 5 <= bytes.length) {
    const length = bytes.readInt32BE(at + 1);
    if (length < 4 || at + 1 + length > bytes.length) return undefined;
    if (bytes[at] === 0x52 && length >= 8 && bytes.readInt32BE(at + 5) === 11) {
      return bytes.toString('latin1', at + 9, at + 1 + length);
    }
    at += 1 + length;
  }
  return undefined;
}

// --- The well-behaved clients -------------------------------------------------------------------

interface GoodResult {
  connects: number;
  queries: number;
  /** The longest a connect-query-disconnect round took, in ms. */
  slowest: number;
  failures: string[];
}

/**
 * Runs alongside the fuzzing: one client connecting, querying and leaving in a loop, and one that
 * stays connected and queries throughout. Every step must succeed.
 */
function startGoodClients(url: string): { stop(): Promise<GoodResult> } {
  const result: GoodResult = { connects: 0, queries: 0, slowest: 0, failures: [] };
  let running = true;
  const churn = (async () => {
    for (let i = 0; running; i++) {
      const started = Date.now();
      try {
        const rows = await queryOnce(url, 'select $1::int + 1 as n', [i]);
        result.slowest = Math.max(result.slowest, Date.now() - started);
        if (rows[0]?.n !== i + 1) result.failures.push(`connect ${i}: got ${JSON.stringify(rows)}`);
        result.connects++;
      } catch (error) {
        result.failures.push(`connect ${i}: ${(error as Error).message}`);
        await sleep(100);
      }
    }
  })();
  const steady = (async () => {
    const client = await connect(url);
    client.on('error', (error) => result.failures.push(`steady client: ${error.message}`));
    try {
      const { rows } = await client.query<{ pid: number }>('select pg_backend_pid() as pid');
      while (running) {
        const again = await client.query<{ pid: number }>('select pg_backend_pid() as pid');
        if (again.rows[0]?.pid !== rows[0]?.pid) result.failures.push('steady client: pid changed');
        result.queries++;
        await sleep(10);
      }
    } catch (error) {
      result.failures.push(`steady client: ${(error as Error).message}`);
    } finally {
      await client.end().catch(() => undefined);
    }
  })();
  return {
    async stop() {
      running = false;
      await Promise.all([churn, steady]);
      return result;
    },
  };
}

/**
 * Sends `startup`, then garbage as fast as the proxy takes it, until the proxy closes the
 * connection (or FLOOD_CLOSED_WITHIN_MS have passed): when the first bytes of an answer came,
 * when it closed, and with which SQLSTATE.
 */
async function floodAfter(
  port: number,
  startup: Buffer,
): Promise<{ refusedAfterMs: number; closedAfterMs: number; code?: string }> {
  const started = Date.now();
  const socket = net.connect({ port, host: '127.0.0.1' });
  const chunks: Buffer[] = [];
  let refusedAfterMs = Infinity;
  socket.on('data', (chunk: Buffer) => {
    chunks.push(chunk);
    // Refused once the ErrorResponse is in (AuthenticationSASL comes first, before the flood).
    if (refusedAfterMs === Infinity && readReply(Buffer.concat(chunks)).error) {
      refusedAfterMs = Date.now() - started;
    }
  });
  socket.on('error', () => undefined);
  const pump = () => {
    while (!socket.destroyed && socket.write(FLOOD_CHUNK));
  };
  socket.on('drain', pump);
  socket.write(startup);
  pump();
  const timer = setTimeout(() => socket.destroy(), FLOOD_CLOSED_WITHIN_MS);
  await new Promise((resolve) => socket.once('close', resolve));
  clearTimeout(timer);
  return {
    refusedAfterMs,
    closedAfterMs: Date.now() - started,
    code: readReply(Buffer.concat(chunks)).error?.code,
  };
}

function memoryMb(pid: number, field: 'VmHWM' | 'VmRSS'): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return Math.round(Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(status)![1]) / 1024);
}

/** Opens the proxy's pools as far as the fuzzing will, so that they don't count as growth. */
async function warmUp(url: string): Promise<void> {
  await Promise.all(Array.from({ length: 8 }, () => queryOnce(url, 'select 1')));
}

/** The proxy's open descriptors once they stop changing (or drop to `target`), within 10 s. */
async function settledFdCount(pid: number, target: number): Promise<number> {
  let last = fdCount(pid);
  for (let waited = 0; waited < 10_000; waited += 250) {
    await sleep(250);
    const now = fdCount(pid);
    if (now <= target || (now === last && target === Infinity)) return now;
    last = now;
  }
  return last;
}

function fdCount(pid: number): number {
  return fs.readdirSync(`/proc/${pid}/fd`).length;
}

// --- Seeded randomness --------------------------------------------------------------------------

/** mulberry32: small, fast, and the same sequence for the same seed everywhere. */
class Random {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }
  bytes(n: number): Buffer {
    const out = Buffer.alloc(n);
    for (let i = 0; i < n; i++) out[i] = this.int(256);
    return out;
  }
  /** Printable ASCII without ',' (a valid SCRAM nonce). */
  text(n: number): Buffer {
    const out = Buffer.alloc(n);
    for (let i = 0; i < n; i++) {
      const c = 0x21 + this.int(0x7e - 0x21);
      out[i] = c === 0x2c ? 0x2d : c;
    }
    return out;
  }
}

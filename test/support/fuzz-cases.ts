// What the protocol fuzzer sends, by stage: authentication (SASL and md5), TLS (handshakes gone
// wrong, SCRAM-SHA-256-PLUS channel binding, queries over TLS), simple and extended query, COPY in
// and out, cancel requests, the SQL console, and random bytes. Inputs are valid
// message sequences that are then mutated (message and byte level), or random bytes; every case
// comes from its own seeded random source, so FUZZ_SEED and the case number replay it.
import { createHash } from 'node:crypto';
import {
  cancelPacket,
  caseRandom,
  cstring,
  int32,
  msg,
  mutateBytes,
  mutateSequence,
  startupPacket,
  typed,
  type Random,
} from './fuzz-messages.js';

export type Mode = 'session' | 'transaction';

export const KINDS = [
  'auth-sasl',
  'auth-md5',
  'tls',
  'simple',
  'extended',
  'copy',
  'cancel',
  'console',
  'random',
] as const;
export type Kind = (typeof KINDS)[number];

/** Roles the fuzzer logs in as: made by the harness (see fuzz-runner.ts). */
export const SCRAM_USER = 'postgres';
export const MD5_USER = 'fuzz_md5';
export const MD5_PASSWORD = 'fuzz-md5-password';
/** A table every mode may read and write (made by the harness). */
export const TABLE = 'fuzz_t';

/** One input sent after login, then followed by the harness's probe (see fuzz-runner.ts). */
export interface Input {
  name: string;
  bytes: Buffer;
}

/**
 * The client's part of an authentication exchange that goes wrong somewhere: what it answers to
 * AuthenticationSASL (10), to the server-first-message (11, given the server's text; undefined
 * sends a correct proof), or to AuthenticationMD5Password (5, given the salt).
 */
export type AuthScript =
  | { method: 'sasl'; initial: Buffer | 'valid'; final?: (serverFirst: string) => Buffer }
  | {
      method: 'md5';
      response: (salt: Buffer) => Buffer;
      /** A mutation of a right answer may leave it right; every other script must be refused. */
      mayLogIn?: boolean;
    };

/**
 * A TLS case: how the connection starts TLS (after an SSLRequest, or at once as PostgreSQL 17+
 * clients with sslnegotiation=direct do), then either handshake bytes gone wrong (made from a
 * real ClientHello), or a SCRAM-SHA-256-PLUS login whose channel binding may be wrong; after a
 * login that works, the case's inputs run over TLS.
 */
export type TlsScript =
  | { direct: boolean; handshake: (clientHello: Buffer) => Buffer }
  | { direct: boolean; plus: PlusLogin };

/**
 * What the client-first-message's GS2 header says and what the client-final-message binds:
 * `valid` binds the certificate's hash as pgbranch offers it; the others must be refused.
 */
export interface PlusLogin {
  name: string;
  /** The mechanism named in SASLInitialResponse. */
  mechanism: string;
  /** The GS2 header: `p=tls-server-end-point,,` for a bound exchange. */
  header: string;
  /** The channel-binding data appended to the header in the final message's c= attribute. */
  binding: (certificateHash: Buffer) => Buffer;
  /** A last mutation of the client-final-message's bytes, if any. */
  mutate?: (final: Buffer) => Buffer;
  /**
   * What pgbranch must do: let it in, refuse it, or either (a mutation may leave the message
   * right, or still decoding to the right proof).
   */
  expect: 'logged in' | 'refused' | 'either';
}

export interface FuzzCase {
  index: number;
  kind: Kind;
  mode: Mode;
  /** The name of what was generated, with its mutations, for reports. */
  name: string;
  database: string;
  /** Authentication cases: the exchange; there are no inputs after it. */
  auth?: AuthScript;
  /** Cancel cases: the bytes of a connection that starts with them (no login). */
  cancel?: { bytes: Buffer; liveKey: boolean };
  /** TLS cases: how TLS starts and what goes over it. */
  tls?: TlsScript;
  /** Inputs on one logged-in connection, each answered before the next is sent. */
  inputs: Input[];
}

const WEIGHTS: [Kind, number][] = [
  ['auth-sasl', 12],
  ['auth-md5', 5],
  ['tls', 8],
  ['simple', 20],
  ['extended', 25],
  ['copy', 15],
  ['cancel', 6],
  ['console', 7],
  ['random', 10],
];
const TOTAL = WEIGHTS.reduce((sum, [, w]) => sum + w, 0);

/** Case `index` of the run with this seed. */
export function generateCase(seed: number, index: number): FuzzCase {
  const rng = caseRandom(seed, index);
  let roll = rng.int(TOTAL);
  const kind = WEIGHTS.find(([, w]) => (roll -= w) < 0)![0];
  const mode: Mode = rng.chance(0.5) ? 'session' : 'transaction';
  const base = { index, kind, mode, database: 'postgres', inputs: [] as Input[] };
  switch (kind) {
    case 'auth-sasl':
      return { ...base, ...saslCase(rng) };
    case 'auth-md5':
      return { ...base, ...md5Case(rng) };
    case 'tls':
      return { ...base, ...tlsCase(rng) };
    case 'cancel':
      return { ...base, ...cancelCase(rng) };
    case 'console':
      return { ...base, database: 'pgbranch', name: 'console', inputs: inputs(rng, consoleInput) };
    case 'simple':
      return { ...base, name: 'simple query', inputs: inputs(rng, simpleInput) };
    case 'extended':
      return { ...base, name: 'extended query', inputs: inputs(rng, extendedInput) };
    case 'copy':
      return { ...base, name: 'copy', inputs: inputs(rng, copyInput) };
    default:
      return { ...base, name: 'random', inputs: inputs(rng, randomInput) };
  }
}

/** A few inputs per connection, so that state left by one (a transaction, a COPY) meets the next. */
function inputs(rng: Random, make: (rng: Random) => Input): Input[] {
  return Array.from({ length: 1 + rng.int(12) }, () => make(rng));
}

/** A sequence's messages, mutated at the message level, then (mostly) at the byte level. */
function mutated(rng: Random, name: string, messages: Buffer[], donors: Buffer[]): Input {
  const done: string[] = [];
  if (rng.chance(0.5)) done.push(...mutateSequence(rng, messages, donors));
  let bytes: Buffer = Buffer.concat(messages);
  if (rng.chance(0.6)) {
    const result = mutateBytes(rng, bytes);
    bytes = result.bytes;
    done.push(...result.done);
  }
  return { name: done.length > 0 ? `${name} (${done.join(', ')})` : name, bytes };
}

// --- Authentication -----------------------------------------------------------------------------

function saslCase(rng: Random): Pick<FuzzCase, 'name' | 'auth'> {
  const nonce = rng.text(24);
  const clientFirst = Buffer.from(`n,,n=,r=${nonce}`);
  const validInitial = msg.saslInitial('SCRAM-SHA-256', clientFirst);
  const initials: [string, () => Buffer][] = [
    [
      'bad mechanism',
      () =>
        msg.saslInitial(
          rng.pick([
            'SCRAM-SHA-1',
            'SCRAM-SHA-256-PLUS',
            '',
            'PLAIN',
            'scram-sha-256',
            'x'.repeat(300),
          ]),
          clientFirst,
        ),
    ],
    ['no mechanism terminator', () => typed('p', Buffer.from('SCRAM-SHA-256'))],
    [
      'data length larger',
      () => msg.saslInitial('SCRAM-SHA-256', clientFirst, clientFirst.length + 1 + rng.int(100)),
    ],
    [
      'data length smaller',
      () => msg.saslInitial('SCRAM-SHA-256', clientFirst, rng.int(clientFirst.length)),
    ],
    ['data length -1', () => msg.saslInitial('SCRAM-SHA-256', Buffer.alloc(0), -1)],
    ['truncated', () => validInitial.subarray(0, 1 + rng.int(validInitial.length - 1))],
    [
      'oversized',
      () =>
        msg.saslInitial(
          'SCRAM-SHA-256',
          Buffer.concat([clientFirst, Buffer.alloc(20_000 + rng.int(2_000_000), 0x61)]),
        ),
    ],
    [
      'bad client-first-message',
      () =>
        msg.saslInitial(
          'SCRAM-SHA-256',
          Buffer.from(
            rng.pick([
              '',
              'y,,n=,r=abc',
              'p=tls-server-end-point,,n=,r=abc',
              'n,,n=,',
              'n,,n=,r=',
              'n,,m=x,n=,r=abc',
              'n,a=x,n=,r=abc',
              `n,,n=,r=${nonce},e=1`,
              'n,,n=,r=a\u00e9b',
              'n',
            ]),
          ),
        ),
    ],
    ['wrong message type', () => typed(rng.pick(['Q', 'X', 'S', 'd']), cstring('select 1'))],
    ['random bytes', () => rng.bytes(rng.int(100))],
    ['mutated', () => mutateBytes(rng, validInitial).bytes],
  ];
  const finals: [string, (serverFirst: string) => Buffer][] = [
    [
      'wrong proof',
      (sf) => msg.saslResponse(clientFinal(sf, Buffer.alloc(32, 7).toString('base64'))),
    ],
    [
      'wrong nonce',
      () => msg.saslResponse(`c=biws,r=${rng.text(40)},p=${Buffer.alloc(32).toString('base64')}`),
    ],
    ['wrong channel binding', (sf) => msg.saslResponse(clientFinal(sf, 'AAAA', 'eSws'))],
    ['no proof', (sf) => msg.saslResponse(`c=biws,r=${serverNonce(sf)}`)],
    ['proof not base64', (sf) => msg.saslResponse(clientFinal(sf, '!!!!'))],
    ['short proof', (sf) => msg.saslResponse(clientFinal(sf, Buffer.alloc(5).toString('base64')))],
    [
      'extensions after proof',
      (sf) => msg.saslResponse(`${clientFinal(sf, Buffer.alloc(32).toString('base64'))},x=1`),
    ],
    ['empty', () => msg.saslResponse('')],
    [
      'oversized',
      (sf) => msg.saslResponse(`${clientFinal(sf, 'A'.repeat(20_000 + rng.int(1_000_000)))}`),
    ],
    ['truncated', (sf) => msg.saslResponse(clientFinal(sf, 'AAAA')).subarray(0, 1 + rng.int(20))],
    [
      'length lies',
      (sf) => {
        const bytes = msg.saslResponse(clientFinal(sf, 'AAAA'));
        bytes.writeInt32BE(rng.pick([0, 3, bytes.length + 10, -5]), 1);
        return bytes;
      },
    ],
    ['another SASLInitialResponse', () => validInitial],
    ['wrong message type', () => typed(rng.pick(['Q', 'X', 'S', 'p']), cstring('select 1'))],
    [
      'mutated',
      (sf) =>
        mutateBytes(rng, msg.saslResponse(clientFinal(sf, Buffer.alloc(32).toString('base64'))))
          .bytes,
    ],
  ];
  if (rng.chance(0.45)) {
    const [name, make] = rng.pick(initials);
    return { name: `SASLInitialResponse: ${name}`, auth: { method: 'sasl', initial: make() } };
  }
  const [name, make] = rng.pick(finals);
  return { name: `SASLResponse: ${name}`, auth: { method: 'sasl', initial: 'valid', final: make } };
}

function clientFinal(serverFirst: string, proof: string, binding = 'biws'): string {
  return `c=${binding},r=${serverNonce(serverFirst)},p=${proof}`;
}

export function serverNonce(serverFirst: string): string {
  return /^r=([^,]*)/.exec(serverFirst)?.[1] ?? '';
}

function md5Case(rng: Random): Pick<FuzzCase, 'name' | 'auth'> {
  const kinds: [string, (salt: Buffer) => Buffer][] = [
    ['wrong password', (salt) => msg.password(md5Response(MD5_USER, 'not-it', salt))],
    ['no terminator', (salt) => typed('p', Buffer.from(md5Response(MD5_USER, MD5_PASSWORD, salt)))],
    ['empty', () => typed('p')],
    ['plain text', () => msg.password(MD5_PASSWORD)],
    [
      'uppercase hash',
      (salt) => msg.password(md5Response(MD5_USER, MD5_PASSWORD, salt).toUpperCase()),
    ],
    [
      'truncated hash',
      (salt) => msg.password(md5Response(MD5_USER, MD5_PASSWORD, salt).slice(0, rng.int(35))),
    ],
    ['oversized', () => msg.password('md5' + 'a'.repeat(20_000 + rng.int(1_000_000)))],
    [
      'length lies',
      (salt) => {
        const bytes = msg.password(md5Response(MD5_USER, MD5_PASSWORD, salt));
        bytes.writeInt32BE(rng.pick([0, 3, bytes.length + 10, -5, 0x7fffffff]), 1);
        return bytes;
      },
    ],
    ['wrong message type', () => typed(rng.pick(['Q', 'X', 'S']), cstring('select 1'))],
    [
      'mutated',
      (salt) => mutateBytes(rng, msg.password(md5Response(MD5_USER, MD5_PASSWORD, salt))).bytes,
    ],
    ['random bytes', () => rng.bytes(1 + rng.int(60))],
  ];
  const [name, response] = rng.pick(kinds);
  return { name: `md5: ${name}`, auth: { method: 'md5', response, mayLogIn: name === 'mutated' } };
}

export function md5Response(user: string, password: string, salt: Buffer): string {
  const inner = createHash('md5')
    .update(password + user)
    .digest('hex');
  return (
    'md5' +
    createHash('md5')
      .update(Buffer.concat([Buffer.from(inner), salt]))
      .digest('hex')
  );
}

// --- TLS ----------------------------------------------------------------------------------------

const BINDING_HEADER = 'p=tls-server-end-point,,';

function tlsCase(rng: Random): Pick<FuzzCase, 'name' | 'tls' | 'inputs'> {
  const direct = rng.chance(0.3);
  const how = direct ? 'direct TLS' : 'SSLRequest';
  if (rng.chance(0.35)) {
    const handshakes: [string, (hello: Buffer) => Buffer][] = [
      ['mutated ClientHello', (hello) => mutateBytes(rng, hello).bytes],
      ['ClientHello cut short', (hello) => hello.subarray(0, 1 + rng.int(hello.length - 1))],
      ['random bytes', () => rng.bytes(1 + rng.int(300))],
      ['a startup packet instead', () => startupPacket({ user: SCRAM_USER, database: 'postgres' })],
      ['ClientHello, then garbage', (hello) => Buffer.concat([hello, rng.bytes(1 + rng.int(64))])],
      ['an alert record', () => Buffer.from([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28])],
    ];
    const [name, handshake] = rng.pick(handshakes);
    // Direct TLS must start with a handshake record's type byte, or it is a startup packet.
    const start = (hello: Buffer) => {
      const bytes = handshake(hello);
      return direct && bytes.length > 0
        ? Buffer.concat([Buffer.from([0x16]), bytes.subarray(1)])
        : bytes;
    };
    return { name: `${how}: ${name}`, tls: { direct, handshake: start }, inputs: [] };
  }
  const valid: PlusLogin = {
    name: 'SCRAM-SHA-256-PLUS',
    mechanism: 'SCRAM-SHA-256-PLUS',
    header: BINDING_HEADER,
    binding: (hash) => hash,
    expect: 'logged in',
  };
  const wrong: PlusLogin[] = [
    { ...valid, name: 'another certificate hash', binding: () => rng.bytes(32), expect: 'refused' },
    {
      ...valid,
      name: 'binding data cut short',
      binding: (h) => h.subarray(0, rng.int(32)),
      expect: 'refused',
    },
    {
      ...valid,
      name: "'y' flag although PLUS was offered",
      mechanism: 'SCRAM-SHA-256',
      header: 'y,,',
      binding: () => Buffer.alloc(0),
      expect: 'refused',
    },
    {
      ...valid,
      name: 'PLUS without binding',
      header: 'n,,',
      binding: () => Buffer.alloc(0),
      expect: 'refused',
    },
    { ...valid, name: 'tls-unique binding', header: 'p=tls-unique,,', expect: 'refused' },
    { ...valid, name: 'unknown binding type', header: `p=${rng.text(8)},,`, expect: 'refused' },
    {
      ...valid,
      name: 'mutated client-final-message',
      mutate: (final) => mutateBytes(rng, final).bytes,
      expect: 'either',
    },
  ];
  const login = rng.chance(0.5) ? valid : rng.pick(wrong);
  // After a login that works, the inputs of another stage go over TLS.
  const make = rng.pick([simpleInput, extendedInput, copyInput]);
  return {
    name: `${how}: ${login.name}`,
    tls: { direct, plus: login },
    inputs:
      login.expect !== 'refused' ? Array.from({ length: 1 + rng.int(6) }, () => make(rng)) : [],
  };
}

// --- Cancel requests ----------------------------------------------------------------------------

function cancelCase(rng: Random): Pick<FuzzCase, 'name' | 'cancel'> {
  const liveKey = rng.chance(0.3);
  const secret = rng.chance(0.8) ? rng.bytes(4) : rng.bytes(rng.int(300));
  let bytes = cancelPacket(rng.int(2 ** 31), secret);
  let name = liveKey ? 'cancel with a live key' : 'cancel with a random key';
  if (!liveKey && rng.chance(0.5)) {
    const result = mutateBytes(rng, bytes);
    bytes = result.bytes;
    name += ` (${result.done.join(', ')})`;
  }
  if (rng.chance(0.1)) {
    bytes = Buffer.concat([bytes, rng.bytes(1 + rng.int(40))]);
    name += ', then more bytes';
  }
  return { name, cancel: { bytes, liveKey } };
}

// --- Simple query -------------------------------------------------------------------------------

const STATEMENTS = [
  'select 1',
  'select generate_series(1, 100)',
  "select repeat('x', 5000)",
  'select 1/0',
  'select * from nosuch_table',
  `select * from ${TABLE} order by a desc limit 20`,
  `insert into ${TABLE} values (1, 'a')`,
  `update ${TABLE} set b = 'c' where a = -1`,
  'begin',
  'commit',
  'rollback',
  'savepoint s1',
  'release s1',
  'rollback to s1',
  'begin; select 1; commit',
  'select 1; select 2',
  'select 1; select 1/0; select 3',
  'set application_name = fuzz',
  'reset all',
  'create temp table if not exists tt (a int)',
  'prepare fz as select $1::int',
  'execute fz(1)',
  'deallocate fz',
  'deallocate all',
  'listen fuzz',
  "notify fuzz, 'x'",
  'unlisten *',
  'declare c cursor with hold for select 1',
  'fetch all from c',
  'close c',
  'discard all',
  "select current_setting('application_name')",
  'do $$ begin perform 1; end $$',
  "select 'é', E'\\\\x00'::bytea",
  '',
  ';',
  'show server_version',
  'select pg_backend_pid()',
  "select pg_notify('fuzz', 'y')",
  'copy (select 1) to stdout',
];

function simpleInput(rng: Random): Input {
  const messages = Array.from({ length: 1 + rng.int(3) }, () => msg.query(rng.pick(STATEMENTS)));
  const donors = [
    msg.sync(),
    msg.flush(),
    msg.parse('', 'select 1'),
    msg.execute(''),
    msg.copyDone(),
  ];
  return mutated(rng, 'Query', messages, donors);
}

// --- Extended query -----------------------------------------------------------------------------

function extendedInput(rng: Random): Input {
  const name = rng.pick(['', '', 's1', 's2']);
  const portal = rng.pick(['', '', 'p1']);
  const int = (n: number) => Buffer.from(String(n));
  const sequences: [string, () => Buffer[]][] = [
    [
      'parse-bind-execute',
      () => [
        msg.parse(name, 'select $1::int + 1', [23]),
        msg.bind(portal, name, [int(rng.int(1000))]),
        msg.describe('P', portal),
        msg.execute(portal),
        msg.sync(),
      ],
    ],
    [
      'binary parameter',
      () => [
        msg.parse(name, 'select $1::int4', [23]),
        msg.bind(portal, name, [rng.pick([int32(7), Buffer.alloc(3), Buffer.alloc(8)])], [1], [1]),
        msg.execute(portal),
        msg.sync(),
      ],
    ],
    [
      'wrong parameter count',
      () => [
        msg.parse(name, 'select $1::int, $2::text'),
        msg.bind(
          portal,
          name,
          Array.from({ length: rng.int(5) }, () => int(1)),
        ),
        msg.execute(portal),
        msg.sync(),
      ],
    ],
    [
      'wrong format count',
      () => [
        msg.parse(name, 'select $1::int'),
        msg.bind(
          portal,
          name,
          [int(1)],
          [0, 1, 0].slice(0, rng.int(4)),
          [0, 1, 2].slice(0, rng.int(4)),
        ),
        msg.execute(portal),
        msg.sync(),
      ],
    ],
    [
      'bad format code',
      () => [
        msg.parse(name, 'select $1::int'),
        msg.bind(portal, name, [int(1)], [rng.pick([2, -1, 255])], [rng.pick([2, 7])]),
        msg.execute(portal),
        msg.sync(),
      ],
    ],
    [
      'null parameter',
      () => [
        msg.parse(name, 'select $1::int is null'),
        msg.bind(portal, name, [null]),
        msg.execute(portal),
        msg.sync(),
      ],
    ],
    [
      'portal in pieces',
      () => [
        msg.parse(name, 'select generate_series(1, 50)'),
        msg.bind(portal, name),
        msg.execute(portal, 1 + rng.int(10)),
        msg.execute(portal, 1 + rng.int(10)),
        msg.execute(portal),
        msg.sync(),
      ],
    ],
    [
      'describe statement',
      () => [
        msg.parse(name, `select * from ${TABLE} limit 1`),
        msg.describe('S', name),
        msg.sync(),
      ],
    ],
    [
      'close',
      () => [msg.close(rng.pick(['S', 'P']), rng.pick([name, portal, 'nosuch'])), msg.sync()],
    ],
    ['flush only', () => [msg.parse(name, 'select 1'), msg.flush()]],
    ['no sync', () => [msg.parse(name, 'select 1'), msg.bind(portal, name), msg.execute(portal)]],
    ['unknown statement', () => [msg.bind(portal, 'nosuch'), msg.execute(portal), msg.sync()]],
    ['unknown portal', () => [msg.describe('P', 'nosuch'), msg.execute('nosuch'), msg.sync()]],
    [
      'parse error',
      () => [msg.parse(name, 'selec 1'), msg.bind(portal, name), msg.execute(portal), msg.sync()],
    ],
    ['two statements in Parse', () => [msg.parse(name, 'select 1; select 2'), msg.sync()]],
    [
      'transaction',
      () => [
        msg.parse('', 'begin'),
        msg.bind('', ''),
        msg.execute(''),
        msg.parse(name, 'select 1'),
        msg.bind('', name),
        msg.execute(''),
        msg.parse('', rng.pick(['commit', 'rollback'])),
        msg.bind('', ''),
        msg.execute(''),
        msg.sync(),
      ],
    ],
    ['sync alone', () => [msg.sync()]],
    ['several syncs', () => [msg.sync(), msg.sync(), msg.sync()]],
    [
      'function call',
      () => [
        msg.functionCall(rng.pick([177, 1, 0, 0x7fffffff]), [int32(1), int32(2)], [1], rng.int(2)),
      ],
    ],
    [
      'interleaved with Query',
      () => [
        msg.parse(name, 'select 1'),
        msg.query('select 2'),
        msg.bind(portal, name),
        msg.execute(portal),
        msg.sync(),
      ],
    ],
    [
      'many parameter types',
      () => [
        msg.parse(
          name,
          'select 1',
          Array.from({ length: rng.int(2000) }, () => 23),
        ),
        msg.sync(),
      ],
    ],
  ];
  const [what, make] = rng.pick(sequences);
  const donors = [
    msg.sync(),
    msg.flush(),
    msg.query('select 1'),
    msg.copyDone(),
    msg.execute(''),
    msg.close('S', ''),
  ];
  return mutated(rng, what, make(), donors);
}

// --- COPY ---------------------------------------------------------------------------------------

function copyInput(rng: Random): Input {
  const row = () =>
    msg.copyData(
      rng.pick([
        '1\ta\n',
        '2\tb\n3\tc\n',
        'x\ty\n',
        '1\n',
        '\\.\n',
        '4\t\\N\n',
        '5\t' + 'z'.repeat(rng.int(3000)) + '\n',
      ]),
    );
  const rows = () => Array.from({ length: rng.int(5) }, row);
  const copyIn = msg.query(`copy ${TABLE} from stdin`);
  const sequences: [string, () => Buffer[]][] = [
    ['copy in', () => [copyIn, ...rows(), msg.copyDone()]],
    ['copy in, failed', () => [copyIn, ...rows(), msg.copyFail('fuzz')]],
    ['copy in, then a Query', () => [copyIn, ...rows(), msg.query('select 1')]],
    [
      'copy in, then Sync and Flush',
      () => [copyIn, ...rows(), msg.sync(), msg.flush(), msg.copyDone()],
    ],
    ['copy in, done twice', () => [copyIn, msg.copyDone(), msg.copyDone()]],
    ['copy in, data after done', () => [copyIn, msg.copyDone(), ...rows()]],
    [
      'copy in, extended',
      () => [
        msg.parse('', `copy ${TABLE} from stdin`),
        msg.bind('', ''),
        msg.execute(''),
        ...rows(),
        rng.pick([msg.copyDone(), msg.copyFail('fuzz')]),
        msg.sync(),
      ],
    ],
    [
      'copy in, binary',
      () => [
        msg.query(`copy ${TABLE} from stdin (format binary)`),
        msg.copyData(rng.bytes(rng.int(40))),
        msg.copyDone(),
      ],
    ],
    ['copy out', () => [msg.query(`copy (select * from ${TABLE} limit 50) to stdout`)]],
    ['copy out, big', () => [msg.query('copy (select generate_series(1, 20000)) to stdout')]],
    [
      'copy out, client sends data',
      () => [
        msg.query('copy (select generate_series(1, 100)) to stdout'),
        ...rows(),
        msg.copyDone(),
      ],
    ],
    [
      'copy out, extended',
      () => [
        msg.parse('', 'copy (select 1) to stdout'),
        msg.bind('', ''),
        msg.execute('', rng.int(3)),
        msg.sync(),
      ],
    ],
    ['copy data out of place', () => [...rows(), msg.copyDone(), msg.copyFail('x')]],
    [
      'copy in a transaction',
      () => [
        msg.query('begin'),
        copyIn,
        ...rows(),
        msg.copyDone(),
        msg.query(rng.pick(['commit', 'rollback'])),
      ],
    ],
  ];
  const [what, make] = rng.pick(sequences);
  const donors = [
    msg.sync(),
    msg.flush(),
    msg.copyDone(),
    msg.copyFail('x'),
    row(),
    msg.query('select 1'),
  ];
  return mutated(rng, what, make(), donors);
}

// --- The SQL console ----------------------------------------------------------------------------

// Commands that only read, or name branches and databases that do not exist: the fuzzer must not
// pause, create or drop anything the well-behaved clients use (PAUSE is left out for that reason).
const CONSOLE = [
  'SHOW BRANCHES',
  'SHOW BRANCHES postgres',
  'SHOW SNAPSHOTS',
  'SHOW POOLS',
  'SHOW CLIENTS',
  'SHOW SERVERS',
  'SHOW VERSION',
  'SHOW HELP',
  'SHOW',
  'SHOW NOTHING',
  'CREATE BRANCH',
  'CREATE BRANCH nosuchdb@fz FROM nosuchdb TTL 1h',
  'CREATE BRANCH nosuchdb@fz EXPIRES 2020-01-01',
  'RESET BRANCH nosuchdb@fz',
  'DROP BRANCH nosuchdb@fz CASCADE',
  'DROP BRANCH postgres',
  'DROP SNAPSHOT x OF nosuchdb@fz',
  'SNAPSHOT BRANCH nosuchdb@fz AS x',
  'RESTORE BRANCH nosuchdb@fz TO x',
  'PROTECT BRANCH nosuchdb@fz',
  'UNPROTECT BRANCH nosuchdb@fz',
  'RESUME nosuchdb',
  'select 1',
  'begin',
  '',
  ';;',
  '"unterminated',
  "'unterminated",
  'SHOW BRANCHES; SHOW POOLS',
  'show branches "nosuchdb"',
  '\u00e9\u00e9',
];

function consoleInput(rng: Random): Input {
  const sequences: [string, () => Buffer[]][] = [
    ['console command', () => [msg.query(rng.pick(CONSOLE))]],
    [
      'console words',
      () => [
        msg.query(
          Array.from({ length: 1 + rng.int(6) }, () => rng.pick(rng.pick(CONSOLE).split(' '))).join(
            ' ',
          ),
        ),
      ],
    ],
    [
      'console random text',
      () => [msg.query(rng.bytes(rng.int(80)).toString('latin1').replace(/\0/g, ''))],
    ],
    [
      'console extended',
      () => [
        msg.parse('', rng.pick(CONSOLE)),
        msg.bind('', ''),
        msg.describe('P', ''),
        msg.execute(''),
        msg.sync(),
      ],
    ],
    ['console copy data', () => [msg.copyData('x'), msg.copyDone(), msg.query('SHOW VERSION')]],
  ];
  const [what, make] = rng.pick(sequences);
  return mutated(rng, what, make(), [
    msg.sync(),
    msg.flush(),
    msg.query('SHOW POOLS'),
    msg.terminate(),
  ]);
}

// --- Random bytes -------------------------------------------------------------------------------

function randomInput(rng: Random): Input {
  if (rng.chance(0.5)) return { name: 'random bytes', bytes: rng.bytes(1 + rng.int(200)) };
  // Well-framed messages of random types with random bodies.
  const messages = Array.from({ length: 1 + rng.int(4) }, () =>
    typed(rng.pick([...'BCDEFHPQSdcfp']), rng.bytes(rng.int(rng.chance(0.1) ? 20_000 : 40))),
  );
  return { name: 'random messages', bytes: Buffer.concat(messages) };
}

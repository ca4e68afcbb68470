import { describe, expect, test } from 'vitest';
import { CommError, PgError, UnsupportedProtocol } from '../errors.js';
import {
  CANCEL_REQUEST_CODE,
  GSSENC_REQUEST_CODE,
  MAX_STARTUP_PACKET,
  SSL_REQUEST_CODE,
  joinOptions,
  parseStartupPacket,
  splitOptions,
  startupPacketLength,
} from './startup.js';

/** A length-prefixed packet: the length word counts itself. */
function packet(...parts: (Buffer | number[])[]): Buffer {
  const body = Buffer.concat(parts.map((p) => (Buffer.isBuffer(p) ? p : Buffer.from(p))));
  const out = Buffer.alloc(4 + body.length);
  out.writeInt32BE(out.length, 0);
  body.copy(out, 4);
  return out;
}

function int32(value: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32BE(value | 0, 0);
  return b;
}

function version(major: number, minor: number): Buffer {
  return int32(((major << 16) | minor) >>> 0);
}

/** name\0value\0... with the final terminator; pass raw Buffers for bytes that aren't UTF-8. */
function params(...pairs: [string | Buffer, string | Buffer][]): Buffer {
  const parts: Buffer[] = [];
  for (const [k, v] of pairs) {
    parts.push(Buffer.from(k), Buffer.alloc(1), Buffer.from(v), Buffer.alloc(1));
  }
  parts.push(Buffer.alloc(1));
  return Buffer.concat(parts);
}

function startup(...pairs: [string | Buffer, string | Buffer][]): Buffer {
  return packet(version(3, 0), params(...pairs));
}

/** The PgError a call throws, for asserting its SQLSTATE and message. */
function refusal(run: () => unknown): PgError {
  try {
    run();
  } catch (error) {
    expect(error).toBeInstanceOf(PgError);
    return error as PgError;
  }
  throw new Error('expected the call to throw');
}

describe('startupPacketLength', () => {
  test('is undefined until the 4-byte length word has arrived', () => {
    expect(startupPacketLength(Buffer.alloc(0))).toBeUndefined();
    expect(startupPacketLength(Buffer.from([0, 0, 0]))).toBeUndefined();
  });

  test('reads the length word, which counts itself, before the rest has arrived', () => {
    expect(startupPacketLength(Buffer.from([0, 0, 0, 8]))).toBe(8);
    expect(startupPacketLength(startup(['user', 'alice']).subarray(0, 6))).toBe(
      startup(['user', 'alice']).length,
    );
  });

  test('accepts lengths from 8 to PostgreSQL’s limit of 10,000 bytes after the length word', () => {
    expect(startupPacketLength(int32(8))).toBe(8);
    expect(startupPacketLength(int32(MAX_STARTUP_PACKET + 4))).toBe(MAX_STARTUP_PACKET + 4);
  });

  // Terminate ('X', length 4) sent before any startup packet reads as length 0x58000000.
  test.each([0, 4, 7, MAX_STARTUP_PACKET + 5, 0x58000000, 0x7fffffff, -1, -0x80000000])(
    'refuses length %i as a CommError: closed without an answer, the length in the log',
    (length) => {
      const error = refusal(() => startupPacketLength(int32(length)));
      expect(error).toBeInstanceOf(CommError);
      expect(error.message).toBe('invalid length of startup packet');
      expect(error.reason).toBe(`invalid length of startup packet: ${length}`);
    },
  );
});

describe('parseStartupPacket: StartupMessage', () => {
  test('reads protocol 3.0 and its parameters in the client’s order', () => {
    // What psql sends for `psql -U alice -d app@feature-x` with an application name.
    const bytes = Buffer.from(
      '00000056' +
        '00030000' +
        Buffer.from(
          'user\0alice\0database\0app@feature-x\0application_name\0psql\0client_encoding\0UTF8\0\0',
        ).toString('hex'),
      'hex',
    );
    expect(bytes.readInt32BE(0)).toBe(bytes.length);
    const parsed = parseStartupPacket(bytes);
    expect(parsed).toEqual({
      kind: 'startup',
      major: 3,
      minor: 0,
      parameters: new Map([
        ['user', 'alice'],
        ['database', 'app@feature-x'],
        ['application_name', 'psql'],
        ['client_encoding', 'UTF8'],
      ]),
      protocolOptions: [],
    });
    expect(parsed.kind === 'startup' && [...parsed.parameters.keys()]).toEqual([
      'user',
      'database',
      'application_name',
      'client_encoding',
    ]);
  });

  test('reads protocol 3.2 and sets `_pq_.` options apart from the parameters', () => {
    const parsed = parseStartupPacket(
      packet(version(3, 2), params(['user', 'bob'], ['_pq_.compression', 'on'], ['database', 'x'])),
    );
    expect(parsed).toEqual({
      kind: 'startup',
      major: 3,
      minor: 2,
      parameters: new Map([
        ['user', 'bob'],
        ['database', 'x'],
      ]),
      protocolOptions: ['_pq_.compression'],
    });
  });

  test('keeps empty values, and UTF-8 in names and values', () => {
    const parsed = parseStartupPacket(startup(['user', 'zoë'], ['options', ''], ['dätabase', '✓']));
    expect(parsed.kind === 'startup' && Object.fromEntries(parsed.parameters)).toEqual({
      user: 'zoë',
      options: '',
      dätabase: '✓',
    });
  });

  test('takes the last value of a parameter named twice, as PostgreSQL does', () => {
    const parsed = parseStartupPacket(startup(['user', 'a'], ['database', 'x'], ['user', 'b']));
    expect(parsed.kind === 'startup' && Object.fromEntries(parsed.parameters)).toEqual({
      user: 'b',
      database: 'x',
    });
  });

  test.each(['true', 'on', 'yes', 'y', 'NO', 'of', '0', '1', 'database'])(
    'takes replication=%s, a value PostgreSQL takes',
    (value) => {
      const parsed = parseStartupPacket(startup(['user', 'a'], ['replication', value]));
      expect(parsed.kind === 'startup' && parsed.parameters.get('replication')).toBe(value);
    },
  );

  test.each(['', 'o', 'maybe', 'truee', '2', 'Database'])(
    'refuses replication=%j with 22023 and PostgreSQL’s hint',
    (value) => {
      const error = refusal(() =>
        parseStartupPacket(startup(['user', 'a'], ['replication', value])),
      );
      expect(error.code).toBe('22023');
      expect(error.message).toBe(`invalid value for parameter "replication": "${value}"`);
      expect(error.hint).toBe('Valid values are: "false", 0, "true", 1, "database".');
    },
  );

  test('refuses a startup packet without a user with 28000, as PostgreSQL does', () => {
    for (const bytes of [startup(['database', 'app']), startup(['user', '']), startup()]) {
      const error = refusal(() => parseStartupPacket(bytes));
      expect(error.code).toBe('28000');
      expect(error.message).toBe('no PostgreSQL user name specified in startup packet');
    }
  });

  test.each([
    ['no final terminator', packet(version(3, 0), Buffer.from('user\0alice\0'))],
    ['no parameters and no terminator', packet(version(3, 0))],
    ['a name without its zero byte', packet(version(3, 0), Buffer.from('user'))],
    ['a name without a value', packet(version(3, 0), Buffer.from('user\0alice\0database\0'))],
    ['a value without its zero byte', packet(version(3, 0), Buffer.from('user\0alice'))],
    ['data after the terminator', packet(version(3, 0), params(['user', 'a']), Buffer.from('x'))],
    ['a second terminator', packet(version(3, 0), params(['user', 'a']), [0])],
  ])('refuses a StartupMessage with %s with 08P01 in PostgreSQL’s words', (_, bytes) => {
    const error = refusal(() => parseStartupPacket(bytes));
    expect(error).not.toBeInstanceOf(CommError);
    expect(error.code).toBe('08P01');
    expect(error.message).toBe('invalid startup packet layout: expected terminator as last byte');
    expect(error.reason).toMatch(/^invalid startup packet layout: /);
  });

  test('refuses parameter names and values that are not valid UTF-8 with 08P01', () => {
    const badValue = refusal(() =>
      parseStartupPacket(startup(['user', Buffer.from([0xc3, 0x28])])),
    );
    expect(badValue.code).toBe('08P01');
    expect(badValue.message).toBe('value of parameter "user" in startup packet is not valid UTF-8');
    const badName = refusal(() =>
      parseStartupPacket(startup(['user', 'a'], [Buffer.from([0xff, 0xfe]), 'x'])),
    );
    expect(badName.code).toBe('08P01');
    expect(badName.message).toBe('parameter name in startup packet is not valid UTF-8');
  });

  test.each([
    [2, 0],
    [1, 0],
    [4, 0],
    [0, 0],
    [0xffff, 0xffff],
  ])('refuses protocol %i.%i with 0A000 in PostgreSQL’s words', (major, minor) => {
    const error = refusal(() =>
      parseStartupPacket(packet(version(major, minor), params(['user', 'a']))),
    );
    expect(error).toBeInstanceOf(UnsupportedProtocol);
    expect(error.code).toBe('0A000');
    expect(error.message).toBe(
      `unsupported frontend protocol ${major}.${minor}: server supports 3.0 to 3.2`,
    );
  });
});

describe('parseStartupPacket: requests', () => {
  test('reads an SSLRequest and a GSSENCRequest', () => {
    expect(parseStartupPacket(Buffer.from('0000000804d2162f', 'hex'))).toEqual({ kind: 'ssl' });
    expect(parseStartupPacket(Buffer.from('0000000804d21630', 'hex'))).toEqual({ kind: 'gssenc' });
    expect(SSL_REQUEST_CODE).toBe(0x04d2162f);
    expect(GSSENC_REQUEST_CODE).toBe(0x04d21630);
  });

  test('reads an encryption request with a body as one, ignoring the body as PostgreSQL does', () => {
    expect(parseStartupPacket(packet(int32(SSL_REQUEST_CODE), [1, 2, 3]))).toEqual({ kind: 'ssl' });
    expect(parseStartupPacket(packet(int32(GSSENC_REQUEST_CODE), [0]))).toEqual({
      kind: 'gssenc',
    });
  });

  test('reads an encryption request already answered as the protocol version its code is', () => {
    const error = refusal(() =>
      parseStartupPacket(packet(int32(SSL_REQUEST_CODE)), new Set(['ssl'])),
    );
    expect([error.code, error.message]).toEqual([
      '0A000',
      'unsupported frontend protocol 1234.5679: server supports 3.0 to 3.2',
    ]);
    expect(
      refusal(() => parseStartupPacket(packet(int32(GSSENC_REQUEST_CODE)), new Set(['gssenc'])))
        .message,
    ).toBe('unsupported frontend protocol 1234.5680: server supports 3.0 to 3.2');
    // The other kind may still be asked for once.
    expect(parseStartupPacket(packet(int32(GSSENC_REQUEST_CODE)), new Set(['ssl']))).toEqual({
      kind: 'gssenc',
    });
  });

  test('reads a protocol 3.0 CancelRequest with its 4-byte secret', () => {
    const bytes = Buffer.from('0000001004d2162e000030390a0b0c0d', 'hex');
    expect(CANCEL_REQUEST_CODE).toBe(0x04d2162e);
    expect(parseStartupPacket(bytes)).toEqual({
      kind: 'cancel',
      processId: 12345,
      secret: Buffer.from([0x0a, 0x0b, 0x0c, 0x0d]),
    });
  });

  test('reads a CancelRequest with a 32-byte secret (3.2), the longest, 256 bytes, and the shortest, 1', () => {
    for (const size of [32, 256, 1]) {
      const secret = Buffer.alloc(size, 0xab);
      const parsed = parseStartupPacket(packet(int32(CANCEL_REQUEST_CODE), int32(-7), secret));
      expect(parsed).toEqual({ kind: 'cancel', processId: -7, secret });
    }
  });

  test.each([
    ['no process id or secret', 8, 'invalid length of cancel request packet'],
    ['half a process id', 10, 'invalid length of cancel request packet'],
    ['a process id but no secret', 12, 'invalid length of cancel key in cancel request packet'],
    ['a 257-byte secret', 12 + 257, 'invalid length of cancel key in cancel request packet'],
  ])('refuses a CancelRequest with %s as a CommError, in PostgreSQL’s words', (_, length, text) => {
    const bytes = packet(int32(CANCEL_REQUEST_CODE), Buffer.alloc(length - 8));
    const error = refusal(() => parseStartupPacket(bytes));
    expect(error).toBeInstanceOf(CommError);
    expect(error.message).toBe(text);
  });
});

describe('splitOptions and joinOptions', () => {
  test('split on runs of whitespace, as PostgreSQL splits the options parameter', () => {
    expect(splitOptions('  -c  search_path=a\t-c\nwork_mem=64MB\r ')).toEqual([
      '-c',
      'search_path=a',
      '-c',
      'work_mem=64MB',
    ]);
    expect(splitOptions('')).toEqual([]);
    expect(splitOptions('   ')).toEqual([]);
  });

  test('a backslash takes the next character literally, spaces and backslashes included', () => {
    expect(splitOptions('-c application_name=my\\ app')).toEqual(['-c', 'application_name=my app']);
    expect(splitOptions('a\\\\b c')).toEqual(['a\\b', 'c']);
    expect(splitOptions('\\ ')).toEqual([' ']);
    expect(splitOptions('x\\')).toEqual(['x\\']);
  });

  test('join escapes what split would read as a separator or escape', () => {
    expect(joinOptions(['-c', 'application_name=my app'])).toBe('-c application_name=my\\ app');
    expect(joinOptions(['C:\\dir'])).toBe('C:\\\\dir');
  });

  test.each([
    [['-c', 'a=b']],
    [['-c', 'application_name=two words', '-c', 'x=\\']],
    [['back\\slash', 'trailing\\', '\\\\double', ' lead', 'trail ', 'tab\there', 'nl\nhere']],
    [[]],
    [['ünïcödé wörds', '✓']],
  ])('join then split gives back the same words: %j', (words) => {
    expect(splitOptions(joinOptions(words))).toEqual(words);
  });
});

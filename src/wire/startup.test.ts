import { describe, expect, test } from 'vitest';
import { PgError } from '../errors.js';
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

  test('accepts lengths from 8 to PostgreSQL’s 10,000-byte limit', () => {
    expect(startupPacketLength(int32(8))).toBe(8);
    expect(startupPacketLength(int32(MAX_STARTUP_PACKET))).toBe(MAX_STARTUP_PACKET);
  });

  test.each([0, 4, 7, MAX_STARTUP_PACKET + 1, 0x7fffffff, -1, -0x80000000])(
    'refuses length %i with 08P01 naming it',
    (length) => {
      const error = refusal(() => startupPacketLength(int32(length)));
      expect(error.code).toBe('08P01');
      expect(error.message).toBe(`invalid length of startup packet: ${length}`);
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

  test('refuses a parameter named twice with 08P01 naming it', () => {
    const error = refusal(() => parseStartupPacket(startup(['user', 'a'], ['user', 'b'])));
    expect(error.code).toBe('08P01');
    expect(error.message).toBe('startup packet names parameter "user" twice');
  });

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
  ])('refuses a StartupMessage with %s with 08P01', (_, bytes) => {
    expect(refusal(() => parseStartupPacket(bytes)).code).toBe('08P01');
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
  ])('refuses protocol %i.%i with 08P01 naming the version', (major, minor) => {
    const error = refusal(() =>
      parseStartupPacket(packet(version(major, minor), params(['user', 'a']))),
    );
    expect(error.code).toBe('08P01');
    expect(error.message).toContain(`unsupported frontend protocol ${major}.${minor}`);
  });
});

describe('parseStartupPacket: requests', () => {
  test('reads an SSLRequest and a GSSENCRequest', () => {
    expect(parseStartupPacket(Buffer.from('0000000804d2162f', 'hex'))).toEqual({ kind: 'ssl' });
    expect(parseStartupPacket(Buffer.from('0000000804d21630', 'hex'))).toEqual({ kind: 'gssenc' });
    expect(SSL_REQUEST_CODE).toBe(0x04d2162f);
    expect(GSSENC_REQUEST_CODE).toBe(0x04d21630);
  });

  test('refuses an encryption request with a body with 08P01', () => {
    for (const code of [SSL_REQUEST_CODE, GSSENC_REQUEST_CODE]) {
      const error = refusal(() => parseStartupPacket(packet(int32(code), [0])));
      expect(error.code).toBe('08P01');
      expect(error.message).toBe('invalid length of encryption request');
    }
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

  test('reads a protocol 3.2 CancelRequest with a 32-byte secret, and the longest, 256 bytes', () => {
    for (const size of [32, 256]) {
      const secret = Buffer.alloc(size, 0xab);
      const parsed = parseStartupPacket(packet(int32(CANCEL_REQUEST_CODE), int32(-7), secret));
      expect(parsed).toEqual({ kind: 'cancel', processId: -7, secret });
    }
  });

  test.each([
    ['no process id or secret', 8],
    ['a process id but no secret', 12],
    ['a 3-byte secret', 15],
    ['a 257-byte secret', 12 + 257],
  ])('refuses a CancelRequest with %s with 08P01', (_, length) => {
    const bytes = packet(int32(CANCEL_REQUEST_CODE), Buffer.alloc(length - 8));
    const error = refusal(() => parseStartupPacket(bytes));
    expect(error.code).toBe('08P01');
    expect(error.message).toBe('invalid length of cancel request');
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

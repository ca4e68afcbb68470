// `pgbranch tls init`: a CA and a server certificate it signed, for development and tests, made with
// the machine's openssl command (node's crypto reads certificates but can't sign them). Run again,
// it keeps the CA and issues a new server certificate, which a running pgbranch takes on SIGHUP or
// RELOAD while clients keep trusting the same CA.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { isIP } from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

const DEFAULT_DIR = path.join('.pgbranch', 'tls');
/** Names every development certificate has: what clients on this machine connect to. */
const LOCAL_NAMES = ['localhost', '127.0.0.1', '::1'];
const CA_DAYS = 3650;
/** The longest validity that Apple platforms accept for a server certificate. */
const SERVER_DAYS = 825;

const USAGE = `Usage: npx pgbranch tls init [--dir DIR] [--host NAME]...

Writes a certificate authority (DIR/ca.crt, ca.key) and a server certificate it signed
(DIR/server.crt, server.key) for localhost, 127.0.0.1, ::1 and each --host NAME (a host name or an
IP address), for development. DIR is ${DEFAULT_DIR} unless given. Run again, it keeps the CA and
writes a new server certificate: a running pgbranch takes it on SIGHUP or the console's RELOAD.
Needs the openssl command.
`;

export interface DevCertificates {
  dir: string;
  ca: string;
  cert: string;
  key: string;
  /** The names the server certificate is valid for. */
  names: string[];
  /** Whether the CA was made now (false: an existing one signed the new certificate). */
  newCa: boolean;
}

/** Makes (or keeps) the CA and writes a new server certificate for localhost and `hosts`. */
export async function writeDevCertificates(
  dir: string,
  hosts: readonly string[],
): Promise<DevCertificates> {
  const at = (name: string) => path.join(dir, name);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  const newCa = !(fs.existsSync(at('ca.crt')) && fs.existsSync(at('ca.key')));
  if (newCa) {
    await run('openssl', [
      ...['req', '-x509', ...ec, '-keyout', at('ca.key'), '-out', at('ca.crt')],
      ...['-days', String(CA_DAYS), '-subj', '/CN=pgbranch development CA'],
      ...['-addext', 'basicConstraints=critical,CA:TRUE'],
      ...['-addext', 'keyUsage=critical,keyCertSign,cRLSign'],
    ]);
    fs.chmodSync(at('ca.key'), 0o600);
  }
  const names = [...new Set([...LOCAL_NAMES, ...hosts])];
  const altNames = names.map((name) => (isIP(name) ? `IP:${name}` : `DNS:${name}`)).join(',');
  // Written beside the old ones and renamed over them, so that a reload never reads half a file.
  const nonce = randomBytes(4).toString('hex');
  const [csr, ext, key, cert] = ['csr', 'ext', 'key', 'crt'].map((suffix) =>
    at(`.server-${nonce}.${suffix}`),
  ) as [string, string, string, string];
  try {
    await run('openssl', [
      ...['req', '-new', ...ec, '-keyout', key, '-out', csr],
      ...['-subj', `/CN=${names.find((name) => !LOCAL_NAMES.includes(name)) ?? 'localhost'}`],
    ]);
    fs.writeFileSync(
      ext,
      [
        `subjectAltName=${altNames}`,
        'basicConstraints=critical,CA:FALSE',
        'keyUsage=critical,digitalSignature,keyEncipherment',
        'extendedKeyUsage=serverAuth',
        '',
      ].join('\n'),
    );
    await run('openssl', [
      ...['x509', '-req', '-in', csr, '-CA', at('ca.crt'), '-CAkey', at('ca.key')],
      ...['-set_serial', `0x${randomBytes(16).toString('hex')}`, '-days', String(SERVER_DAYS)],
      ...['-extfile', ext, '-out', cert],
    ]);
    fs.chmodSync(key, 0o600);
    fs.renameSync(key, at('server.key'));
    fs.renameSync(cert, at('server.crt'));
  } finally {
    for (const file of [csr, ext, key, cert]) fs.rmSync(file, { force: true });
  }
  return { dir, ca: at('ca.crt'), cert: at('server.crt'), key: at('server.key'), names, newCa };
}

/** `pgbranch tls ...`: the exit code. */
export async function runTlsCommand(argv: string[]): Promise<number> {
  const words = argv.slice(argv.indexOf('tls') + 1);
  if (words.includes('--help') || words.includes('-h')) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (words[0] !== 'init') {
    process.stderr.write(`pgbranch tls: unknown command "${words[0] ?? ''}"\n\n${USAGE}`);
    return 2;
  }
  let dir = DEFAULT_DIR;
  const hosts: string[] = [];
  for (let i = 1; i < words.length; i++) {
    const word = words[i]!;
    const [flag, inline] = word.includes('=') ? word.split(/=(.*)/s) : [word, undefined];
    const value = inline ?? words[++i];
    if ((flag !== '--dir' && flag !== '--host') || !value) {
      process.stderr.write(
        `pgbranch tls init: ${flag === '--dir' || flag === '--host' ? `${flag} needs a value` : `unknown argument ${word}`}\n\n${USAGE}`,
      );
      return 2;
    }
    if (flag === '--dir') dir = value;
    else hosts.push(value);
  }
  let made: DevCertificates;
  try {
    made = await writeDevCertificates(path.resolve(dir), hosts);
  } catch (error) {
    const reason =
      (error as NodeJS.ErrnoException).code === 'ENOENT'
        ? 'the openssl command was not found: install it (apt-get install openssl)'
        : ((error as { stderr?: string }).stderr?.trim() ?? (error as Error).message);
    process.stderr.write(`pgbranch tls init: ${reason}\n`);
    return 1;
  }
  process.stdout.write(instructions(made));
  return 0;
}

function instructions({ dir, ca, cert, key, names, newCa }: DevCertificates): string {
  const shellPath = (file: string) => (/^[\w@%+=:,./-]+$/.test(file) ? file : `'${file}'`);
  return `${newCa ? 'Made a development CA' : 'Kept the CA'} and wrote a new server certificate in ${dir}
  CA:           ${ca}   (clients verify pgbranch with it: sslrootcert)
  certificate:  ${cert}   (for ${names.join(', ')})
  key:          ${key}

Start pgbranch with TLS:
  npx pgbranch --tls-cert ${shellPath(cert)} --tls-key ${shellPath(key)}
or in pgbranch.yaml:
  tls:
    cert: ${cert}
    key: ${key}
or PGBRANCH_TLS_CERT and PGBRANCH_TLS_KEY. A running pgbranch takes a new certificate on SIGHUP or
RELOAD (in the console: psql -d pgbranch -c RELOAD).

Connect, checking the certificate:
  psql "postgres://postgres@localhost:6432/postgres?sslmode=verify-full&sslrootcert=${encodeURI(ca)}"
node-postgres: ssl: { ca: fs.readFileSync('${ca}') }; other clients: sslrootcert=${ca}.
This CA is for development: keep ca.key private, and use your own certificates in production.
`;
}

// WAL positions (LSNs) as PostgreSQL writes them, `16/B374D848`, and as numbers to compare and
// subtract: 64 bits, so bigint.

export type Lsn = bigint;

const FORM = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/;

export function parseLsn(text: string): Lsn {
  const match = FORM.exec(text.trim());
  if (!match) throw new Error(`"${text}" is not a WAL position (like 0/16B3748)`);
  return (BigInt(`0x${match[1]}`) << 32n) | BigInt(`0x${match[2]}`);
}

export function formatLsn(lsn: Lsn): string {
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;
}

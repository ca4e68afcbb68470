// How the page writes sizes, times, expiries and connection strings.
import type { BranchInfo } from '../src/lifecycle/model.js';
import type { ProxyAddress } from './api.js';

export function formatBytes(bytes: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value >= 10 || unit === 0 ? Math.round(value) : value.toFixed(1)} ${units[unit]}`;
}

const SPANS: [number, string][] = [
  [86_400_000, 'd'],
  [3_600_000, 'h'],
  [60_000, 'min'],
  [1000, 's'],
];

/** 3 h, 2 d: the largest unit that fits. */
export function formatSpan(ms: number): string {
  for (const [size, unit] of SPANS) if (ms >= size) return `${Math.floor(ms / size)} ${unit}`;
  return 'now';
}

/** "5 min ago", "in 2 d", or "" for no time. */
export function formatWhen(iso: string | null | undefined, now: number): string {
  if (!iso) return '';
  const at = Date.parse(iso);
  if (Number.isNaN(at)) return iso;
  const delta = at - now;
  if (Math.abs(delta) < 1000) return 'now';
  return delta < 0 ? `${formatSpan(-delta)} ago` : `in ${formatSpan(delta)}`;
}

export function describeExpiry(info: BranchInfo, now: number): string {
  if (info.expiresBy === null) return '';
  const idle = info.ttlMs === null ? '' : ` (${formatSpan(info.ttlMs)} idle)`;
  return `${formatWhen(info.expiresBy, now)}${idle}`;
}

/** Where a branch is reached: app@feature/x keeps its @ and / (see the README on slashes). */
function databasePart(info: BranchInfo): string {
  // An instance branch holds every database of its instance; postgres is in every one.
  const name = info.database === '' ? `postgres@${info.branch}` : info.name;
  return encodeURIComponent(name).replace(/%40/g, '@').replace(/%2F/g, '/');
}

/** The branch's connection string, without a password: psql asks, or reads PGPASSWORD. */
export function connectionString(info: BranchInfo, proxy: ProxyAddress): string {
  const host = proxy.host ?? location.hostname;
  const hostPart = host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
  return `postgres://${encodeURIComponent(proxy.user)}@${hostPart}:${proxy.port}/${databasePart(info)}`;
}

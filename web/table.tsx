// The branch tree as a table: one row per branch, its restore points under it, and the chosen
// branch's details (connection string, facts, actions) in a row of their own below it.
import { useState } from 'preact/hooks';
import type { BranchInfo, SnapshotInfo } from '../src/lifecycle/model.js';
import type { ProxyAddress } from './api.js';
import { connectionString, describeExpiry, formatBytes, formatWhen } from './format.js';
import type { Row } from './tree.js';

/** Set by a source's branches (their data's moment), absent elsewhere. */
type Listed = BranchInfo;

export type BranchAction =
  | { kind: 'create'; parent: string; snapshot?: string }
  | { kind: 'reset' | 'snapshot' | 'delete' | 'expire'; name: string }
  | { kind: 'protect'; name: string; on: boolean }
  | { kind: 'restore' | 'delete-point'; name: string; point: string }
  | { kind: 'diff'; from: string; to: string };

export const isRoot = (info: BranchInfo) => info.branch === 'main';

function kindOf(info: BranchInfo): string {
  if (isRoot(info)) return 'root';
  if (info.origin === 'external') return 'external';
  return info.clone ? 'clone' : 'copy';
}

interface TableProps {
  rows: Row[];
  now: number;
  proxy: ProxyAddress | undefined;
  selected: string | undefined;
  onSelect: (name: string | undefined) => void;
  onFold: (name: string) => void;
  onAction: (action: BranchAction) => void;
  /** Columns that only some setups have: instance state, a source's data time. */
  showState: boolean;
  showDataAsOf: boolean;
}

export function BranchTable(props: TableProps) {
  const { now } = props;
  const columns = 9 + (props.showState ? 1 : 0) + (props.showDataAsOf ? 1 : 0);
  return (
    <table class="branches">
      <thead>
        <tr>
          <th>Branch</th>
          {props.showState && <th>State</th>}
          <th class="num">Clients</th>
          <th>Last connection</th>
          <th>Created</th>
          {props.showDataAsOf && <th>Data as of</th>}
          <th class="num">Size</th>
          <th>Made by</th>
          <th>Protection</th>
          <th>Expires</th>
          <th />
        </tr>
      </thead>
      <tbody>
        {props.rows.map((row) => {
          if (row.kind === 'point') {
            return (
              <PointRow
                key={`${row.of.name}:${row.point.name}`}
                guide={row.guide}
                of={row.of}
                point={row.point}
                now={now}
                span={columns - 6}
                onAction={props.onAction}
              />
            );
          }
          const info = row.info as Listed;
          const open = props.selected === info.name;
          return [
            <tr
              key={info.name}
              data-branch={info.name}
              class={`branch${row.match ? '' : ' context'}${open ? ' open' : ''}`}
            >
              <td class="tree">
                <span class="guide">{row.guide}</span>
                {row.foldable ? (
                  <button
                    class="fold"
                    aria-label={`${row.collapsed ? 'expand' : 'collapse'} ${info.name}`}
                    aria-expanded={!row.collapsed}
                    onClick={() => props.onFold(info.name)}
                  >
                    {row.collapsed ? '▸' : '▾'}
                  </button>
                ) : (
                  <span class="fold" />
                )}
                <button
                  class="name"
                  aria-expanded={open}
                  onClick={() => props.onSelect(open ? undefined : info.name)}
                >
                  {info.name}
                </button>
              </td>
              {props.showState && <td class={`state ${info.state}`}>{info.state}</td>}
              <td class="num clients">{info.clients > 0 ? info.clients : ''}</td>
              <td title={info.lastConnectedAt ?? ''}>{formatWhen(info.lastConnectedAt, now)}</td>
              <td title={info.createdAt ?? ''}>{formatWhen(info.createdAt, now)}</td>
              {props.showDataAsOf && (
                <td title={info.dataAsOf ?? ''}>{formatWhen(info.dataAsOf, now)}</td>
              )}
              <td class="num">{formatBytes(info.sizeBytes)}</td>
              <td>{kindOf(info)}</td>
              <td>{info.protected ? 'protected' : ''}</td>
              <td title={info.expiresBy ?? ''}>{describeExpiry(info, now)}</td>
              <td />
            </tr>,
            open && (
              <tr key={`${info.name} details`} class="details">
                <td colSpan={columns}>
                  <Details info={info} proxy={props.proxy} now={now} onAction={props.onAction} />
                </td>
              </tr>
            ),
          ];
        })}
      </tbody>
    </table>
  );
}

function PointRow(props: {
  guide: string;
  of: BranchInfo;
  point: SnapshotInfo;
  now: number;
  span: number;
  onAction: (action: BranchAction) => void;
}) {
  const { of, point } = props;
  return (
    <tr class="point" data-point={`${of.name}:${point.name}`}>
      <td class="tree">
        <span class="guide">{props.guide}</span>
        <span class="fold" />
        <span class="point-name" title="restore point">
          ◆ {point.name}
        </span>
      </td>
      <td colSpan={props.span} title={point.createdAt}>
        restore point, saved {formatWhen(point.createdAt, props.now)}
        {point.auto ? ' (automatic)' : ''}
      </td>
      <td class="num">{formatBytes(point.sizeBytes)}</td>
      <td colSpan={3} />
      <td class="actions">
        {!isRoot(of) && (
          <button
            onClick={() => props.onAction({ kind: 'restore', name: of.name, point: point.name })}
          >
            Restore
          </button>
        )}
        <button
          onClick={() => props.onAction({ kind: 'create', parent: of.name, snapshot: point.name })}
        >
          New branch
        </button>
        <button
          onClick={() => props.onAction({ kind: 'delete-point', name: of.name, point: point.name })}
        >
          Delete
        </button>
      </td>
    </tr>
  );
}

function CopyButton({ text }: { text: string }) {
  const [copied, setCopied] = useState(false);
  return (
    <button
      class="copy"
      onClick={() =>
        void navigator.clipboard.writeText(text).then(
          () => {
            setCopied(true);
            setTimeout(() => setCopied(false), 1500);
          },
          () => window.prompt('Copy the connection string:', text),
        )
      }
    >
      {copied ? 'Copied' : 'Copy'}
    </button>
  );
}

function Details(props: {
  info: Listed;
  proxy: ProxyAddress | undefined;
  now: number;
  onAction: (action: BranchAction) => void;
}) {
  const { info, onAction } = props;
  const root = isRoot(info);
  const facts: [string, string | null | undefined][] = [
    ['parent', info.parent ?? (root ? null : 'unknown (made outside pgbranch)')],
    ['made from restore point', info.fromSnapshot],
    ['restored to', info.restoredFrom],
    ['created', info.createdAt],
    ['last connection', info.lastConnectedAt],
    ['data as of', info.dataAsOf],
    ['expires', info.expiresBy],
    ['on the server', info.physical],
  ];
  return (
    <div class="detail">
      {props.proxy && (
        <div class="connection">
          <code class="conn">{connectionString(info, props.proxy)}</code>
          <CopyButton text={connectionString(info, props.proxy)} />
          <span class="hint">no password in it: psql asks, or reads PGPASSWORD</span>
        </div>
      )}
      <dl>
        {facts
          .filter(([, value]) => value !== null && value !== undefined && value !== '')
          .map(([term, value]) => [<dt key={`${term}t`}>{term}</dt>, <dd key={term}>{value}</dd>])}
      </dl>
      <div class="actions">
        <button onClick={() => onAction({ kind: 'create', parent: info.name })}>New branch</button>
        <button onClick={() => onAction({ kind: 'snapshot', name: info.name })}>
          Save restore point
        </button>
        {!root && (
          <>
            <button
              disabled={info.protected}
              onClick={() => onAction({ kind: 'reset', name: info.name })}
            >
              Reset
            </button>
            <button
              onClick={() => onAction({ kind: 'protect', name: info.name, on: !info.protected })}
            >
              {info.protected ? 'Unprotect' : 'Protect'}
            </button>
            <button onClick={() => onAction({ kind: 'expire', name: info.name })}>Expiry</button>
            {info.parent && (
              <button onClick={() => onAction({ kind: 'diff', from: info.parent!, to: info.name })}>
                Schema diff with {info.parent}
              </button>
            )}
            <button
              class="danger"
              disabled={info.protected}
              onClick={() => onAction({ kind: 'delete', name: info.name })}
            >
              Delete
            </button>
          </>
        )}
      </div>
    </div>
  );
}

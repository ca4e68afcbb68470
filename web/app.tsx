// The branch page: the tree of every database's branches, live from /v1/events, and the actions
// of the admin API on them. Served by pgbranch on its admin port at /.
import { render } from 'preact';
import { useCallback, useEffect, useMemo, useState } from 'preact/hooks';
import type { BranchInfo, CreateResult, DeleteResult } from '../src/lifecycle/model.js';
import {
  adminToken,
  ApiFailure,
  branchPath,
  follow,
  request,
  type ErrorInfo,
  type ProxyAddress,
} from './api.js';
import { DiffDialog } from './diff.js';
import {
  ConfirmDialog,
  CreateDialog,
  ErrorBox,
  ExpiryDialog,
  SnapshotDialog,
  TokenDialog,
  type CreateRequest,
} from './dialogs.js';
import { BranchTable, isRoot, type BranchAction } from './table.js';
import { buildTree, subtree, visibleRows } from './tree.js';
import './style.css';

/** Relative times ("5 min ago") are drawn again this often. */
const CLOCK_MS = 10_000;

function App() {
  const [branches, setBranches] = useState<BranchInfo[]>();
  const [proxy, setProxy] = useState<ProxyAddress>();
  const [live, setLive] = useState(false);
  const [feedError, setFeedError] = useState<ErrorInfo>();
  /** Why the token is asked for; undefined while none is needed. */
  const [tokenReason, setTokenReason] = useState<string>();
  const [tokenVersion, setTokenVersion] = useState(0);
  const [collapsed, setCollapsed] = useState(new Set<string>());
  const [filter, setFilter] = useState('');
  const [selected, setSelected] = useState<string>();
  const [dialog, setDialog] = useState<BranchAction>();
  const [busy, setBusy] = useState(false);
  const [dialogError, setDialogError] = useState<ErrorInfo>();
  const [notice, setNotice] = useState<string>();
  const [now, setNow] = useState(Date.now());

  const unauthorized = useCallback((failure: ApiFailure) => {
    setTokenReason(
      adminToken.get() === undefined ? 'This page needs the admin token' : failure.info.message,
    );
  }, []);

  useEffect(() => {
    if (tokenReason !== undefined) return;
    const stop = follow({
      branches: (list) => {
        setBranches(list);
        setFeedError(undefined);
        setNow(Date.now());
      },
      failure: (failure) => {
        if (failure.status === 401) unauthorized(failure);
        else setFeedError(failure.info);
      },
      live: setLive,
    });
    request<ProxyAddress>('GET', '/v1/connection').then(setProxy, () => undefined);
    return stop;
  }, [tokenVersion, tokenReason, unauthorized]);

  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), CLOCK_MS);
    return () => clearInterval(timer);
  }, []);

  const tree = useMemo(() => buildTree(branches ?? []), [branches]);
  const rows = useMemo(() => visibleRows(tree, collapsed, filter), [tree, collapsed, filter]);
  const list = branches ?? [];
  const byName = (name: string) => list.find((b) => b.name === name);

  const close = () => {
    setDialog(undefined);
    setDialogError(undefined);
  };

  /** Runs one admin API call for the open dialog; on success reads the list at once. */
  const run = async (work: () => Promise<string>) => {
    setBusy(true);
    setDialogError(undefined);
    try {
      const said = await work();
      setNotice(said);
      close();
      setBranches((await request<{ branches: BranchInfo[] }>('GET', '/v1/branches')).branches);
    } catch (failure) {
      if (!(failure instanceof ApiFailure)) throw failure;
      if (failure.status === 401) unauthorized(failure);
      setDialogError(failure.info);
    } finally {
      setBusy(false);
    }
  };

  const onAction = (action: BranchAction) => {
    setNotice(undefined);
    setDialogError(undefined);
    // Protecting changes nothing that needs a second look: no dialog.
    if (action.kind === 'protect') {
      void run(async () => {
        await request(action.on ? 'PUT' : 'DELETE', branchPath(action.name, '/protection'));
        return `${action.name} is ${action.on ? 'protected' : 'no longer protected'}`;
      });
      return;
    }
    setDialog(action);
  };

  const fold = (name: string) =>
    setCollapsed((current) => {
      const next = new Set(current);
      if (!next.delete(name)) next.add(name);
      return next;
    });
  /** Folds every branch that has something to fold away, or none. */
  const foldAll = (on: boolean) => {
    const parents = new Set(list.map((b) => b.parent));
    const foldable = list.filter((b) => b.snapshots.length > 0 || parents.has(b.name));
    setCollapsed(on ? new Set(foldable.map((b) => b.name)) : new Set());
  };

  const dialogProps = { busy, error: dialogError, onClose: close };
  const showState = list.some((b) => b.database === '');
  const showDataAsOf = list.some((b) => (b as { dataAsOf?: unknown }).dataAsOf != null);

  return (
    <>
      <header>
        <h1>pgbranch</h1>
        <input
          type="search"
          class="filter"
          placeholder="Filter: pr-* or text"
          aria-label="filter branches by name"
          value={filter}
          onInput={(event) => setFilter(event.currentTarget.value)}
        />
        <button onClick={() => foldAll(false)}>Expand all</button>
        <button onClick={() => foldAll(true)}>Collapse all</button>
        <button
          onClick={() => {
            const first = list.find((b) => !isRoot(b)) ?? list[0];
            onAction({
              kind: 'diff',
              from: first?.parent ?? first?.name ?? '',
              to: first?.name ?? '',
            });
          }}
          disabled={list.length === 0}
        >
          Schema diff
        </button>
        <button
          class="primary"
          disabled={list.length === 0}
          onClick={() => onAction({ kind: 'create', parent: selected ?? list[0]!.name })}
        >
          New branch
        </button>
        <span class={`live ${live ? 'on' : 'off'}`} title="changes show within two seconds">
          {live ? '● live' : '○ reconnecting'}
        </span>
      </header>
      <main>
        <ErrorBox error={feedError} />
        {/* An action without a dialog (protect) fails here. */}
        <ErrorBox error={dialog ? undefined : dialogError} />
        {notice && (
          <div class="notice" role="status">
            {notice}
          </div>
        )}
        {branches === undefined ? (
          <p class="loading">Loading branches…</p>
        ) : list.length === 0 ? (
          <p class="summary">
            No databases yet. Make one through pgbranch (<code>create database app</code> in psql),
            then connect to <code>app@feature-x</code>: its branches show here as they are made.
          </p>
        ) : (
          <>
            <p class="summary">
              {countLabel(list.filter((b) => !isRoot(b)).length, 'branch', 'branches')} of{' '}
              {countLabel(list.filter(isRoot).length, 'root', 'roots')}
              {filter.trim() !== '' &&
                `; ${countLabel(rows.filter((r) => r.kind === 'branch' && r.match).length, 'match', 'matches')}`}
            </p>
            <BranchTable
              rows={rows}
              now={now}
              proxy={proxy}
              selected={selected}
              onSelect={setSelected}
              onFold={fold}
              onAction={onAction}
              showState={showState}
              showDataAsOf={showDataAsOf}
            />
          </>
        )}
      </main>
      {tokenReason !== undefined && (
        <TokenDialog
          reason={tokenReason}
          onToken={(token) => {
            adminToken.set(token);
            setTokenReason(undefined);
            setTokenVersion((v) => v + 1);
          }}
        />
      )}
      {tokenReason === undefined && dialog && (
        <ActionDialog
          action={dialog}
          branches={list}
          tree={tree}
          byName={byName}
          dialogProps={dialogProps}
          run={run}
          unauthorized={unauthorized}
        />
      )}
    </>
  );
}

const countLabel = (n: number, one: string, many: string) => `${n} ${n === 1 ? one : many}`;

function ActionDialog(props: {
  action: BranchAction;
  branches: BranchInfo[];
  tree: ReturnType<typeof buildTree>;
  byName: (name: string) => BranchInfo | undefined;
  dialogProps: { busy: boolean; error: ErrorInfo | undefined; onClose: () => void };
  run: (work: () => Promise<string>) => Promise<void>;
  unauthorized: (failure: ApiFailure) => void;
}) {
  const { action, dialogProps, run } = props;
  switch (action.kind) {
    case 'create':
      return (
        <CreateDialog
          {...dialogProps}
          branches={props.branches}
          parent={action.parent}
          snapshot={action.snapshot}
          onCreate={(body: CreateRequest) =>
            void run(async () => {
              const result = await request<CreateResult>('POST', '/v1/branches', body);
              return result.created
                ? `Created ${result.branch.name} from ${body.parent}${body.snapshot ? ` at ${body.snapshot}` : ''} in ${Math.round(result.ms)} ms (${result.branch.clone ? 'clone' : 'copy'})`
                : `${result.branch.name} exists already, with the same parent`;
            })
          }
        />
      );
    case 'reset': {
      const info = props.byName(action.name);
      return (
        <ConfirmDialog
          {...dialogProps}
          title={`Reset ${action.name}?`}
          action="Reset"
          onConfirm={() =>
            void run(async () => {
              await request('POST', branchPath(action.name, '/reset'));
              return `${action.name} is a fresh copy of ${info?.parent ?? 'its parent'}`;
            })
          }
        >
          <p>
            {action.name} becomes a fresh copy of <strong>{info?.parent ?? 'its parent'}</strong> as
            it is now: everything written in it since it was made or last reset is lost. Its clients
            ({info?.clients ?? 0} now) are disconnected and may reconnect at once.
          </p>
        </ConfirmDialog>
      );
    }
    case 'restore':
      return (
        <ConfirmDialog
          {...dialogProps}
          title={`Restore ${action.name}?`}
          action="Restore"
          onConfirm={() =>
            void run(async () => {
              await request('POST', branchPath(action.name, '/restore'), {
                snapshot: action.point,
              });
              return `${action.name} is as it was at ${action.point}`;
            })
          }
        >
          <p>
            {action.name} goes back to its restore point <strong>{action.point}</strong>: what was
            written since is lost. Its clients are disconnected.
          </p>
        </ConfirmDialog>
      );
    case 'delete': {
      const doomed = subtree(props.tree, action.name);
      const cascade = doomed.length > 1;
      const points = doomed.reduce((n, b) => n + b.snapshots.length, 0);
      return (
        <ConfirmDialog
          {...dialogProps}
          title={`Delete ${action.name}?`}
          action={cascade ? `Delete ${doomed.length} branches` : `Delete ${action.name}`}
          onConfirm={() =>
            void run(async () => {
              const result = await request<DeleteResult>(
                'DELETE',
                branchPath(action.name, cascade ? '?cascade=true' : ''),
              );
              return `Deleted ${result.deleted.join(', ')}`;
            })
          }
        >
          <p>
            This drops {cascade ? 'these branches' : 'this branch'}
            {points > 0 ? ` and ${countLabel(points, 'restore point', 'restore points')}` : ''}, and
            disconnects their clients. It cannot be undone.
          </p>
          <ul class="doomed">
            {doomed.map((b) => (
              <li key={b.name}>
                <strong>{b.name}</strong>
                {b.name !== action.name && ' (made from it: cascade)'}
                {b.snapshots.length > 0 &&
                  ` with restore points ${b.snapshots.map((s) => s.name).join(', ')}`}
                {b.clients > 0 && `, ${countLabel(b.clients, 'client', 'clients')} connected`}
              </li>
            ))}
          </ul>
        </ConfirmDialog>
      );
    }
    case 'delete-point':
      return (
        <ConfirmDialog
          {...dialogProps}
          title={`Delete restore point ${action.point}?`}
          action="Delete restore point"
          onConfirm={() =>
            void run(async () => {
              await request(
                'DELETE',
                branchPath(action.name, `/snapshots/${encodeURIComponent(action.point)}`),
              );
              return `Deleted restore point ${action.point} of ${action.name}`;
            })
          }
        >
          <p>
            This drops the restore point <strong>{action.point}</strong> of {action.name}. The
            branch itself stays as it is.
          </p>
        </ConfirmDialog>
      );
    case 'snapshot': {
      const info = props.byName(action.name);
      if (!info) return null;
      return (
        <SnapshotDialog
          {...dialogProps}
          info={info}
          onSnapshot={(point) =>
            void run(async () => {
              await request('POST', branchPath(action.name, '/snapshots'), { name: point });
              return `Saved ${action.name} as restore point ${point}`;
            })
          }
        />
      );
    }
    case 'expire': {
      const info = props.byName(action.name);
      if (!info) return null;
      return (
        <ExpiryDialog
          {...dialogProps}
          info={info}
          onChange={(change) =>
            void run(async () => {
              await request('PATCH', branchPath(action.name), change);
              return `Changed the expiry of ${action.name}`;
            })
          }
        />
      );
    }
    case 'diff':
      return (
        <DiffDialog
          branches={props.branches}
          from={action.from}
          to={action.to}
          onClose={dialogProps.onClose}
          onUnauthorized={props.unauthorized}
        />
      );
    case 'protect':
      return null;
  }
}

render(<App />, document.getElementById('app')!);

// The page's dialogs: the token prompt, creating a branch, confirmations of what an action
// changes or deletes, a restore point's name and a branch's expiry. Each shows the failure of its
// own action (message and SQLSTATE) inside itself, so nothing typed is lost.
import type { ComponentChildren } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import type { BranchInfo } from '../src/lifecycle/model.js';
import type { ErrorInfo } from './api.js';

export function ErrorBox({ error }: { error: ErrorInfo | undefined }) {
  if (!error) return null;
  return (
    <div class="error" role="alert">
      <strong>{error.message}</strong> <code class="sqlstate">{error.code}</code>
      {error.detail && <div>{error.detail}</div>}
      {error.hint && <div class="hint">{error.hint}</div>}
    </div>
  );
}

interface ModalProps {
  title: string;
  children: ComponentChildren;
  onClose: () => void;
  /** The submit button's words; none for a dialog that only shows. */
  action?: string;
  danger?: boolean;
  busy: boolean;
  error?: ErrorInfo | undefined;
  onSubmit?: () => void;
}

export function Modal(props: ModalProps) {
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const dialog = ref.current;
    if (dialog && !dialog.open) dialog.showModal();
  }, []);
  return (
    <dialog
      ref={ref}
      aria-label={props.title}
      onCancel={(event) => {
        event.preventDefault();
        props.onClose();
      }}
    >
      <form
        method="dialog"
        onSubmit={(event) => {
          event.preventDefault();
          if (!props.busy) props.onSubmit?.();
        }}
      >
        <h2>{props.title}</h2>
        {props.children}
        <ErrorBox error={props.error} />
        <div class="buttons">
          <button type="button" onClick={props.onClose}>
            {props.onSubmit ? 'Cancel' : 'Close'}
          </button>
          {props.onSubmit && (
            <button type="submit" class={props.danger ? 'danger' : 'primary'} disabled={props.busy}>
              {props.busy ? 'Working…' : props.action}
            </button>
          )}
        </div>
      </form>
    </dialog>
  );
}

export interface DialogProps {
  busy: boolean;
  error: ErrorInfo | undefined;
  onClose: () => void;
}

export function TokenDialog(props: { reason: string; onToken: (token: string) => void }) {
  const [token, setToken] = useState('');
  return (
    <Modal
      title="Admin token"
      action="Use this token"
      busy={false}
      onClose={() => undefined}
      onSubmit={() => token.trim() !== '' && props.onToken(token.trim())}
    >
      <p>
        {props.reason}. This pgbranch’s admin API requires the token it was started with (
        <code>admin.token</code>, <code>PGBRANCH_ADMIN_TOKEN</code>). It is kept for this browser
        tab’s session only.
      </p>
      <label>
        Token
        <input
          type="password"
          name="token"
          autoFocus
          autoComplete="off"
          value={token}
          onInput={(event) => setToken(event.currentTarget.value)}
        />
      </label>
    </Modal>
  );
}

export interface CreateRequest {
  name: string;
  parent: string;
  snapshot?: string;
  ttl?: string;
  expiresAt?: string;
}

export function CreateDialog(
  props: DialogProps & {
    branches: BranchInfo[];
    parent: string;
    snapshot: string | undefined;
    onCreate: (request: CreateRequest) => void;
  },
) {
  const [parent, setParent] = useState(props.parent);
  const [snapshot, setSnapshot] = useState(props.snapshot ?? '');
  const [name, setName] = useState('');
  const [expiry, setExpiry] = useState<'none' | 'ttl' | 'at'>('none');
  const [ttl, setTtl] = useState('7d');
  const [at, setAt] = useState('');
  const parentInfo = props.branches.find((b) => b.name === parent);
  // Instance branches are named alone (feature-x); database branches as app@feature-x.
  const prefix = parentInfo && parentInfo.database !== '' ? `${parentInfo.database}@` : '';
  return (
    <Modal
      title="New branch"
      action="Create branch"
      busy={props.busy}
      error={props.error}
      onClose={props.onClose}
      onSubmit={() =>
        props.onCreate({
          name: prefix + name.trim(),
          parent,
          ...(snapshot === '' ? {} : { snapshot }),
          ...(expiry === 'ttl' ? { ttl: ttl.trim() } : {}),
          ...(expiry === 'at' ? { expiresAt: at } : {}),
        })
      }
    >
      <label>
        From
        <select
          name="parent"
          value={parent}
          onChange={(event) => {
            setParent(event.currentTarget.value);
            setSnapshot('');
          }}
        >
          {props.branches.map((b) => (
            <option key={b.name} value={b.name}>
              {b.name}
            </option>
          ))}
        </select>
      </label>
      <label>
        Restore point
        <select
          name="snapshot"
          value={snapshot}
          onChange={(event) => setSnapshot(event.currentTarget.value)}
        >
          <option value="">its current state</option>
          {parentInfo?.snapshots.map((s) => (
            <option key={s.name} value={s.name}>
              {s.name}
            </option>
          ))}
        </select>
      </label>
      <label>
        Name
        <span class="prefixed">
          {prefix && <span class="prefix">{prefix}</span>}
          <input
            name="name"
            required
            autoFocus
            placeholder="feature-x"
            value={name}
            onInput={(event) => setName(event.currentTarget.value)}
          />
        </span>
      </label>
      <ExpiryFields
        expiry={expiry}
        setExpiry={setExpiry}
        ttl={ttl}
        setTtl={setTtl}
        at={at}
        setAt={setAt}
        noneLabel="never expires"
      />
    </Modal>
  );
}

function ExpiryFields(props: {
  expiry: 'none' | 'ttl' | 'at';
  setExpiry: (value: 'none' | 'ttl' | 'at') => void;
  ttl: string;
  setTtl: (value: string) => void;
  at: string;
  setAt: (value: string) => void;
  noneLabel: string;
}) {
  return (
    <fieldset>
      <legend>Expiry</legend>
      <label class="inline">
        <input
          type="radio"
          name="expiry"
          checked={props.expiry === 'none'}
          onChange={() => props.setExpiry('none')}
        />
        {props.noneLabel}
      </label>
      <label class="inline">
        <input
          type="radio"
          name="expiry"
          value="ttl"
          checked={props.expiry === 'ttl'}
          onChange={() => props.setExpiry('ttl')}
        />
        after idle for
        <input
          name="ttl"
          size={6}
          value={props.ttl}
          onFocus={() => props.setExpiry('ttl')}
          onInput={(event) => props.setTtl(event.currentTarget.value)}
        />
      </label>
      <label class="inline">
        <input
          type="radio"
          name="expiry"
          value="at"
          checked={props.expiry === 'at'}
          onChange={() => props.setExpiry('at')}
        />
        on
        <input
          type="date"
          name="expiresAt"
          value={props.at}
          onFocus={() => props.setExpiry('at')}
          onInput={(event) => props.setAt(event.currentTarget.value)}
        />
      </label>
    </fieldset>
  );
}

export function ExpiryDialog(
  props: DialogProps & {
    info: BranchInfo;
    onChange: (change: { ttl?: string | null; expiresAt?: string | null }) => void;
  },
) {
  const { info } = props;
  const [expiry, setExpiry] = useState<'none' | 'ttl' | 'at'>(
    info.expiresAt !== null ? 'at' : info.ttlMs !== null ? 'ttl' : 'none',
  );
  const [ttl, setTtl] = useState(info.ttlMs === null ? '7d' : `${Math.round(info.ttlMs / 1000)}s`);
  const [at, setAt] = useState(info.expiresAt?.slice(0, 10) ?? '');
  return (
    <Modal
      title={`Expiry of ${info.name}`}
      action="Save"
      busy={props.busy}
      error={props.error}
      onClose={props.onClose}
      onSubmit={() =>
        props.onChange(
          expiry === 'none'
            ? { ttl: null, expiresAt: null }
            : expiry === 'ttl'
              ? { ttl: ttl.trim(), expiresAt: null }
              : { expiresAt: at, ttl: null },
        )
      }
    >
      <ExpiryFields
        expiry={expiry}
        setExpiry={setExpiry}
        ttl={ttl}
        setTtl={setTtl}
        at={at}
        setAt={setAt}
        noneLabel="never"
      />
    </Modal>
  );
}

export function SnapshotDialog(
  props: DialogProps & { info: BranchInfo; onSnapshot: (name: string) => void },
) {
  const [name, setName] = useState('');
  return (
    <Modal
      title={`Restore point of ${props.info.name}`}
      action="Save restore point"
      busy={props.busy}
      error={props.error}
      onClose={props.onClose}
      onSubmit={() => props.onSnapshot(name.trim())}
    >
      <p>
        Saves {props.info.name} as it is now. Its clients in transaction mode pause meanwhile; a
        session-mode client makes it fail (55006).
      </p>
      <label>
        Name
        <input
          name="point"
          required
          autoFocus
          placeholder="before-migration"
          value={name}
          onInput={(event) => setName(event.currentTarget.value)}
        />
      </label>
    </Modal>
  );
}

/** A confirmation that names what the action changes or deletes. */
export function ConfirmDialog(
  props: DialogProps & {
    title: string;
    action: string;
    danger?: boolean;
    children: ComponentChildren;
    onConfirm: () => void;
  },
) {
  return (
    <Modal
      title={props.title}
      action={props.action}
      danger={props.danger ?? true}
      busy={props.busy}
      error={props.error}
      onClose={props.onClose}
      onSubmit={props.onConfirm}
    >
      {props.children}
    </Modal>
  );
}

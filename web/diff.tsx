// The schema difference of two branches (or restore points), side by side: what only the first
// has on the left, what only the second has on the right, and a changed object's before and after.
import { useState } from 'preact/hooks';
import type { BranchInfo, DiffResult } from '../src/lifecycle/model.js';
import { ApiFailure, request, type ErrorInfo } from './api.js';
import { Modal } from './dialogs.js';

type DiffItem = DiffResult['diff']['added'][number];

const label = (item: DiffItem) => `${item.kind} ${item.name}`;

function Side({ heading, text }: { heading: string; text: string | undefined }) {
  return (
    <>
      <div class="diff-name">{heading}</div>
      {text !== undefined && <pre>{text}</pre>}
    </>
  );
}

export function DiffView({ result }: { result: DiffResult }) {
  const { added, removed, changed } = result.diff;
  if (added.length + removed.length + changed.length === 0) {
    return <p class="same">No schema differences.</p>;
  }
  return (
    <table class="diff">
      <thead>
        <tr>
          <th>{result.from}</th>
          <th>{result.to}</th>
        </tr>
      </thead>
      <tbody>
        {removed.map((item) => (
          <tr key={`r ${label(item)}`} class="removed">
            <td>
              <Side heading={label(item)} text={item.detail} />
            </td>
            <td />
          </tr>
        ))}
        {changed.map((item) => (
          <tr key={`c ${label(item)} ${item.detail ?? ''}`} class="changed">
            <td>
              <Side
                heading={`${label(item)}: ${item.detail ?? ''}`}
                text={item.before ?? '(none)'}
              />
            </td>
            <td>
              <Side
                heading={`${label(item)}: ${item.detail ?? ''}`}
                text={item.after ?? '(none)'}
              />
            </td>
          </tr>
        ))}
        {added.map((item) => (
          <tr key={`a ${label(item)}`} class="added">
            <td />
            <td>
              <Side heading={label(item)} text={item.detail} />
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

/** Every branch and restore point, as the diff route names them: app@x and app@x:before. */
function choices(branches: BranchInfo[]): string[] {
  return branches.flatMap((b) => [b.name, ...b.snapshots.map((s) => `${b.name}:${s.name}`)]);
}

export function DiffDialog(props: {
  branches: BranchInfo[];
  from: string;
  to: string;
  onClose: () => void;
  onUnauthorized: (failure: ApiFailure) => void;
}) {
  const [from, setFrom] = useState(props.from);
  const [to, setTo] = useState(props.to);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<ErrorInfo>();
  const [result, setResult] = useState<DiffResult>();
  // Instance branches hold every database of their instance: the diff is of one of them.
  const instances = props.branches.some((b) => b.database === '');
  const [database, setDatabase] = useState('postgres');
  const names = choices(props.branches);
  /** feature-x as app@feature-x, main as app, for a diff of database app of two instances. */
  const qualify = (name: string) =>
    !instances ? name : name === 'main' ? database : `${database}@${name}`;
  const compare = async () => {
    setBusy(true);
    setError(undefined);
    try {
      const query = `?from=${encodeURIComponent(qualify(from))}&to=${encodeURIComponent(qualify(to))}`;
      setResult(await request<DiffResult>('GET', `/v1/diff${query}`));
    } catch (failure) {
      if (!(failure instanceof ApiFailure)) throw failure;
      if (failure.status === 401) props.onUnauthorized(failure);
      setResult(undefined);
      setError(failure.info);
    } finally {
      setBusy(false);
    }
  };
  const select = (name: string, value: string, set: (value: string) => void) => (
    <select name={name} value={value} onChange={(event) => set(event.currentTarget.value)}>
      {names.map((n) => (
        <option key={n} value={n}>
          {n}
        </option>
      ))}
    </select>
  );
  return (
    <Modal
      title="Schema diff"
      action="Compare"
      busy={busy}
      error={error}
      onClose={props.onClose}
      onSubmit={() => void compare()}
    >
      <div class="diff-pick">
        {instances && (
          <label>
            Database
            <input
              name="database"
              value={database}
              onInput={(event) => setDatabase(event.currentTarget.value)}
            />
          </label>
        )}
        <label>From {select('from', from, setFrom)}</label>
        <label>To {select('to', to, setTo)}</label>
      </div>
      {result && <DiffView result={result} />}
    </Modal>
  );
}

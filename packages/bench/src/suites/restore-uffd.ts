/** Eager vs lazy vs lazy+prefetch restore (needs @tierstack/uffd); filled in when the engine lands. */
import type { SnapshotCatalog } from '@tierstack/faas';
import type { CaseResult, SuiteContext } from '../harness.js';

export async function* restoreUffdCases(_ctx: SuiteContext, _catalog: SnapshotCatalog): AsyncIterable<CaseResult> {}

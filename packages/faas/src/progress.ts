/**
 * Import/export progress: a callback for API users and, when asked (the CLI on a TTY), a
 * cli-progress bar on stderr.
 */
import cliProgress from 'cli-progress';

export interface ProgressEvent {
  id: string;
  phase: 'import' | 'export';
  /** Pages processed so far / in total. */
  done: number;
  total: number;
  /** Import: pages stored and zero pages elided so far. */
  stored: number;
  zero: number;
}

export type ProgressCallback = (e: ProgressEvent) => void;

export interface ProgressOptions {
  onProgress?: ProgressCallback;
  /** Draw a progress bar on stderr (default: no; the CLI turns it on when stderr is a TTY). */
  progressBar?: boolean;
}

export interface ProgressSink {
  update(e: ProgressEvent): void;
  stop(): void;
}

export function progressSink(opts: ProgressOptions, title: string, total: number): ProgressSink {
  const bar = opts.progressBar
    ? new cliProgress.SingleBar(
        { format: `${title} [{bar}] {percentage}% | {value}/{total} pages | {stored} stored, {zero} zero`, hideCursor: true, stream: process.stderr },
        cliProgress.Presets.shades_classic,
      )
    : undefined;
  bar?.start(total, 0, { stored: 0, zero: 0 });
  return {
    update(e) {
      bar?.update(e.done, { stored: e.stored, zero: e.zero });
      opts.onProgress?.(e);
    },
    stop() {
      bar?.stop();
    },
  };
}

/**
 * The worker's end of the keeper channel: a SOCK_SEQPACKET socket (fd 3 by default,
 * $TIERSTACK_KEEPER_CTL_FD) whose records are `KIND <json or text>`.
 *
 * Keeper → worker: every record carries exactly one descriptor (SCM_RIGHTS), received natively on
 * a thread of @tierstack/uffd's receiveUffd; the keeper sends the next record only after this
 * worker answered `ACK`, so a record is never read together with the next one.
 *   MEMFD {index,name,size} + memfd   a region the DRAM cache lives in (held by the keeper)
 *   START {keeperPid,gen,memfds}      + /dev/null: serve now (a standby waits for this)
 *   UFFD {id,pid,uid,gid,resumed,msg,removed} + the VM's userfaultfd (msg: the handshake, base64;
 *                                     removed: [[address, length], ...] earlier workers reported)
 *   CRIU {id,layout,replayBytes,resumed} + one end of a socket pair carrying a CRIU connection
 * Worker → keeper (plain writes, one record each):
 *   HELLO <pid> · ACK [id|C<id>] · READY <human line> · ADOPTED <id> <base>:<size>,... ·
 *   REJECT <id> <reason> · END <id> · STATS <json> · FINAL <json> · CKPT <id> <in> <out> <layout> ·
 *   CLOSED <id> · ERROR <text> · REMOVED <id> <start> <end> (from the uffd engine's fault thread:
 *   a range the VM removed; the keeper passes its list on in the next worker's UFFD record, "removed")
 */
import { writeSync } from 'node:fs';
import { receiveUffd, closeFd } from '@tierstack/uffd';

export interface KeeperMessage {
  kind: string;
  /** The record after its kind, parsed as JSON when it is JSON. */
  body: Record<string, unknown>;
  /** The descriptor that came with it (the receiver owns it). */
  fd: number;
}

/** The descriptor of the keeper channel given to this process, if it runs under a keeper. */
export function keeperChannelFd(): number | undefined {
  const v = process.env['TIERSTACK_KEEPER_CTL_FD'];
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  return Number.isInteger(n) && n >= 0 ? n : undefined;
}

export class KeeperChannel {
  #open = true;
  /** Why the channel closed (the keeper hung up, or the receive failed). */
  closedBecause: string | undefined;

  constructor(readonly fd: number) {}

  /** False once the keeper is gone (a send failed or the channel hung up). */
  get open(): boolean {
    return this.#open;
  }

  /** Sends one record; false if the keeper is gone. */
  send(kind: string, body?: string | number | object): boolean {
    if (!this.#open) return false;
    const text = body === undefined ? kind : `${kind} ${typeof body === 'object' ? JSON.stringify(body) : String(body)}`;
    try {
      writeSync(this.fd, Buffer.from(text));
      return true;
    } catch (err) {
      this.#open = false;
      this.closedBecause ??= `send: ${(err as Error).message}`;
      return false;
    }
  }

  /** The next record, or undefined when the keeper is gone. */
  async receive(): Promise<KeeperMessage | undefined> {
    if (!this.#open) return undefined;
    let got: Awaited<ReturnType<typeof receiveUffd>>;
    try {
      got = await receiveUffd(this.fd);
    } catch (err) {
      // EOF (the keeper died: "no descriptor" with nothing received) or a broken channel.
      this.#open = false;
      this.closedBecause = `${(err as { code?: string }).code ?? 'error'}: ${(err as Error).message}`;
      return undefined;
    }
    const text = got.message.toString('utf8');
    const sp = text.indexOf(' ');
    const kind = sp < 0 ? text : text.slice(0, sp);
    const rest = sp < 0 ? '' : text.slice(sp + 1);
    let body: Record<string, unknown> = {};
    if (rest.startsWith('{')) {
      try {
        body = JSON.parse(rest) as Record<string, unknown>;
      } catch {
        closeFd(got.fd);
        return { kind: 'BAD', body: { text: rest }, fd: -1 };
      }
    } else if (rest) {
      body = { text: rest };
    }
    return { kind, body, fd: got.fd };
  }
}

/**
 * The seam between the SCSI layer and a transport.
 *
 * The SCSI layer (CDB builders, sense parsing, retries) builds ScsiCommands and hands them to a
 * ScsiExecutor; the SRP session implements ScsiExecutor over one channel. On the target side the
 * test SRP target hands each SRP_CMD to a ScsiTargetLun (a RAM LUN emulator in tests).
 */

/** One SCSI command as the SCSI layer hands it to a transport (the SRP session). */
export interface ScsiCommand {
  /** 64-bit SCSI LUN in SAM format as it goes on the wire (8 bytes big-endian). */
  lun: bigint;
  /** 6..16 bytes. */
  cdb: Buffer;
  /** Data-out payload (writes); the transport may read it until the promise settles. */
  dataOut?: Buffer;
  /** Expected data-in bytes (reads). */
  dataInLength?: number;
  /** Optional caller-provided destination for data-in (length >= dataInLength). */
  dataIn?: Buffer;
  /** Per-command timeout; on expiry the session aborts it with ABORT TASK. */
  timeoutMs?: number;
}

/** What the target answered for one command. A CHECK CONDITION is a result, not an exception. */
export interface ScsiResult {
  /** SAM status byte (0 GOOD, 2 CHECK CONDITION, 8 BUSY, 0x28 TASK SET FULL, ...). */
  status: number;
  /** Sense data, copied (valid after the command's life). */
  sense?: Buffer;
  /** Data-in received (a view of cmd.dataIn when given), length = bytes actually transferred. */
  dataIn?: Buffer;
  /** Data-in underflow (positive) / overflow (negative), 0 if none. */
  residual: number;
}

/** Anything that can carry a SCSI command to a LUN and bring back its status. */
export interface ScsiExecutor {
  execute(cmd: ScsiCommand): Promise<ScsiResult>;
}

/** Why a transport could not carry out a command. */
export type TransportErrorCode = 'disconnected' | 'aborted' | 'timeout' | 'closed' | 'protocol';

/** A command that could not be carried out by the transport (channel lost, aborted, timed out, session closed). */
export class TransportError extends Error {
  constructor(
    message: string,
    readonly code: TransportErrorCode,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'TransportError';
  }
}

/**
 * Target side: what the test SRP target calls to execute a command on a LUN (implemented by the
 * SCSI engineer's RAM LUN emulator in src/testing/scsi-lun.ts).
 *
 * allocationLength is the data-in buffer length the initiator described; a LUN may return more
 * (the target truncates and reports an overflow residual) or less (underflow).
 */
export interface ScsiTargetLun {
  /**
   * True when execute() reads dataOut only during the call, even when it answers with a promise:
   * the target may then hand it a view of the received IU (immediate data) instead of a copy.
   */
  readonly readsDataOutOnlyDuringExecute?: boolean;
  execute(
    cdb: Buffer,
    dataOut: Buffer | undefined,
    allocationLength: number,
  ): { status: number; sense?: Buffer; dataIn?: Buffer } | Promise<{ status: number; sense?: Buffer; dataIn?: Buffer }>;
}

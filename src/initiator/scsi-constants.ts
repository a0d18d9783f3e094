/**
 * SCSI constants used by the SCSI layer and the RAM LUN emulator.
 *
 * Opcodes, SAM status codes, sense keys and peripheral device types are named exactly as in Linux
 * include/scsi/scsi_proto.h; the other groups (VPD page codes, designator fields, ASC/ASCQ pairs)
 * have no Linux header names and are named after the T10 SPC-4 (r37) / SBC-3 (r35) field names.
 * nameOf…() helpers turn values into names for log lines.
 */

/* ------------------------------------------------------------------------------------------ */
/* Opcodes (scsi_proto.h). Only the ones this project builds, parses or emulates.              */
/* ------------------------------------------------------------------------------------------ */

export const TEST_UNIT_READY = 0x00;
export const REQUEST_SENSE = 0x03;
export const INQUIRY = 0x12;
export const MODE_SENSE = 0x1a;
export const READ_CAPACITY = 0x25;
export const READ_10 = 0x28;
export const WRITE_10 = 0x2a;
export const SYNCHRONIZE_CACHE = 0x35;
export const WRITE_SAME = 0x41;
export const UNMAP = 0x42;
export const MODE_SENSE_10 = 0x5a;
export const PERSISTENT_RESERVE_IN = 0x5e;
export const PERSISTENT_RESERVE_OUT = 0x5f;
export const READ_16 = 0x88;
export const COMPARE_AND_WRITE = 0x89;
export const WRITE_16 = 0x8a;
export const VERIFY_16 = 0x8f;
export const SYNCHRONIZE_CACHE_16 = 0x91;
export const WRITE_SAME_16 = 0x93;
export const SERVICE_ACTION_IN_16 = 0x9e;
export const REPORT_LUNS = 0xa0;
export const MAINTENANCE_IN = 0xa3;

/* Service actions of SERVICE ACTION IN(16). */
export const SAI_READ_CAPACITY_16 = 0x10;
export const SAI_GET_LBA_STATUS = 0x12;

/* ------------------------------------------------------------------------------------------ */
/* SAM status codes (scsi_proto.h enum sam_status).                                            */
/* ------------------------------------------------------------------------------------------ */

export const SAM_STAT_GOOD = 0x00;
export const SAM_STAT_CHECK_CONDITION = 0x02;
export const SAM_STAT_CONDITION_MET = 0x04;
export const SAM_STAT_BUSY = 0x08;
export const SAM_STAT_INTERMEDIATE = 0x10;
export const SAM_STAT_INTERMEDIATE_CONDITION_MET = 0x14;
export const SAM_STAT_RESERVATION_CONFLICT = 0x18;
export const SAM_STAT_COMMAND_TERMINATED = 0x22; /* obsolete in SAM-3 */
export const SAM_STAT_TASK_SET_FULL = 0x28;
export const SAM_STAT_ACA_ACTIVE = 0x30;
export const SAM_STAT_TASK_ABORTED = 0x40;

/* ------------------------------------------------------------------------------------------ */
/* Sense keys (scsi_proto.h).                                                                  */
/* ------------------------------------------------------------------------------------------ */

export const NO_SENSE = 0x00;
export const RECOVERED_ERROR = 0x01;
export const NOT_READY = 0x02;
export const MEDIUM_ERROR = 0x03;
export const HARDWARE_ERROR = 0x04;
export const ILLEGAL_REQUEST = 0x05;
export const UNIT_ATTENTION = 0x06;
export const DATA_PROTECT = 0x07;
export const BLANK_CHECK = 0x08;
export const VENDOR_SPECIFIC = 0x09;
export const COPY_ABORTED = 0x0a;
export const ABORTED_COMMAND = 0x0b;
export const VOLUME_OVERFLOW = 0x0d;
export const MISCOMPARE = 0x0e;

/* ------------------------------------------------------------------------------------------ */
/* Peripheral device types (scsi_proto.h) and qualifiers (SPC-4 6.4.2).                        */
/* ------------------------------------------------------------------------------------------ */

export const TYPE_DISK = 0x00;
export const TYPE_TAPE = 0x01;
export const TYPE_PRINTER = 0x02;
export const TYPE_PROCESSOR = 0x03;
export const TYPE_WORM = 0x04;
export const TYPE_ROM = 0x05;
export const TYPE_SCANNER = 0x06;
export const TYPE_MOD = 0x07;
export const TYPE_MEDIUM_CHANGER = 0x08;
export const TYPE_COMM = 0x09;
export const TYPE_RAID = 0x0c;
export const TYPE_ENCLOSURE = 0x0d;
export const TYPE_RBC = 0x0e;
export const TYPE_OSD = 0x11;
export const TYPE_ZBC = 0x14;
export const TYPE_WLUN = 0x1e;
export const TYPE_NO_LUN = 0x7f;

/** PERIPHERAL QUALIFIER: a device of this type is connected to this LUN. */
export const PQ_CONNECTED = 0;
/** PERIPHERAL QUALIFIER: supported but not connected now. */
export const PQ_NOT_CONNECTED = 1;
/** PERIPHERAL QUALIFIER: no device can be connected to this LUN (byte 0 = 0x7f). */
export const PQ_NOT_SUPPORTED = 3;

/* ------------------------------------------------------------------------------------------ */
/* VPD page codes (SPC-4 7.8, SBC-3 6.5).                                                      */
/* ------------------------------------------------------------------------------------------ */

export const VPD_SUPPORTED_PAGES = 0x00;
export const VPD_UNIT_SERIAL_NUMBER = 0x80;
export const VPD_DEVICE_IDENTIFICATION = 0x83;
export const VPD_BLOCK_LIMITS = 0xb0;
export const VPD_BLOCK_DEVICE_CHARACTERISTICS = 0xb1;
export const VPD_LOGICAL_BLOCK_PROVISIONING = 0xb2;

/* Mode pages (SBC-3 6.4) and the mode parameter header (SPC-4 7.5.5, SBC-3 6.4.2). */
/** Caching mode page (SBC-3 6.4.5): WCE, RCD. Linux sd.c asks for page 8 in sd_read_cache_type(). */
export const CACHING_MODE_PAGE = 0x08;
/** Caching page byte 2: WCE, write cache enable. */
export const CACHING_WCE = 0x04;
/** Caching page byte 2: RCD, read cache disable. */
export const CACHING_RCD = 0x01;
/** DEVICE-SPECIFIC PARAMETER of a direct-access device: WP (write protected). */
export const MODE_DSP_WP = 0x80;
/** DEVICE-SPECIFIC PARAMETER of a direct-access device: DPOFUA (DPO and FUA bits supported). */
export const MODE_DSP_DPOFUA = 0x10;
/** MODE SENSE PC field: current values. */
export const MODE_PC_CURRENT = 0;
/** MODE SENSE PAGE CODE 3Fh: return all mode pages (Linux sd_read_write_protect_flag() asks for it). */
export const MODE_PAGE_ALL = 0x3f;
/** MODE SENSE PAGE CODE 00h: vendor specific, no page format (sd's second try for the WP bit). */
export const MODE_PAGE_VENDOR = 0x00;

/** PAGE LENGTH of the Block Limits VPD page (SBC-3 table 209): 003Ch. */
export const VPD_BLOCK_LIMITS_PAGE_LENGTH = 0x3c;
/** PAGE LENGTH of the Logical Block Provisioning VPD page without a provisioning group descriptor. */
export const VPD_LBP_PAGE_LENGTH = 0x04;

/* ------------------------------------------------------------------------------------------ */
/* Device identification VPD page (SPC-4 7.8.6): designator fields.                            */
/* ------------------------------------------------------------------------------------------ */

/* CODE SET */
export const CODE_SET_BINARY = 0x1;
export const CODE_SET_ASCII = 0x2;
export const CODE_SET_UTF8 = 0x3;

/* ASSOCIATION */
export const ASSOCIATION_LOGICAL_UNIT = 0x0;
export const ASSOCIATION_TARGET_PORT = 0x1;
export const ASSOCIATION_TARGET_DEVICE = 0x2;

/* DESIGNATOR TYPE */
export const DESIGNATOR_VENDOR_SPECIFIC = 0x0;
export const DESIGNATOR_T10_VENDOR_ID = 0x1;
export const DESIGNATOR_EUI64 = 0x2;
export const DESIGNATOR_NAA = 0x3;
export const DESIGNATOR_RELATIVE_TARGET_PORT = 0x4;
export const DESIGNATOR_TARGET_PORT_GROUP = 0x5;
export const DESIGNATOR_LOGICAL_UNIT_GROUP = 0x6;
export const DESIGNATOR_MD5_LOGICAL_UNIT = 0x7;
export const DESIGNATOR_SCSI_NAME_STRING = 0x8;
export const DESIGNATOR_PROTOCOL_SPECIFIC_PORT = 0x9;
export const DESIGNATOR_UUID = 0xa;

/* PROTOCOL IDENTIFIER (scsi_proto.h enum scsi_protocol; valid when PIV = 1). */
export const SCSI_PROTOCOL_FCP = 0;
export const SCSI_PROTOCOL_SPI = 1;
export const SCSI_PROTOCOL_SSA = 2;
export const SCSI_PROTOCOL_SBP = 3;
export const SCSI_PROTOCOL_SRP = 4;
export const SCSI_PROTOCOL_ISCSI = 5;
export const SCSI_PROTOCOL_SAS = 6;
export const SCSI_PROTOCOL_ADT = 7;
export const SCSI_PROTOCOL_ATA = 8;
export const SCSI_PROTOCOL_UNSPEC = 0xf;

/* ------------------------------------------------------------------------------------------ */
/* Sense data (SPC-4 4.5).                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* RESPONSE CODE */
export const SENSE_FIXED_CURRENT = 0x70;
export const SENSE_FIXED_DEFERRED = 0x71;
export const SENSE_DESC_CURRENT = 0x72;
export const SENSE_DESC_DEFERRED = 0x73;
export const SENSE_VENDOR_SPECIFIC = 0x7f;

/* Sense data descriptor types (SPC-4 table 29, SBC-3 4.18). */
export const SENSE_DESC_INFORMATION = 0x00;
export const SENSE_DESC_COMMAND_SPECIFIC = 0x01;
export const SENSE_DESC_SENSE_KEY_SPECIFIC = 0x02;
export const SENSE_DESC_FIELD_REPLACEABLE_UNIT = 0x03;
export const SENSE_DESC_BLOCK_COMMANDS = 0x05;

/** Length of the fixed-format sense data the emulator returns (additional sense length 0Ah). */
export const FIXED_SENSE_LEN = 18;

/* Additional sense codes the SCSI layer acts on (ASC, then ASCQ where one is meant). */
export const ASC_NO_ADDITIONAL_SENSE = 0x00;
export const ASC_LUN_NOT_READY = 0x04;
export const ASCQ_NOT_READY_CAUSE_NOT_REPORTABLE = 0x00;
export const ASCQ_BECOMING_READY = 0x01;
export const ASCQ_INITIALIZING_COMMAND_REQUIRED = 0x02;
export const ASCQ_MANUAL_INTERVENTION_REQUIRED = 0x03;
export const ASCQ_FORMAT_IN_PROGRESS = 0x04;
export const ASCQ_OPERATION_IN_PROGRESS = 0x07;
export const ASCQ_ASYMMETRIC_ACCESS_TRANSITION = 0x0a;
export const ASC_UNRECOVERED_READ_ERROR = 0x11;
export const ASC_PARAMETER_LIST_LENGTH_ERROR = 0x1a;
export const ASC_INVALID_COMMAND_OPERATION_CODE = 0x20;
export const ASC_LBA_OUT_OF_RANGE = 0x21;
export const ASC_INVALID_FIELD_IN_CDB = 0x24;
export const ASC_LOGICAL_UNIT_NOT_SUPPORTED = 0x25;
export const ASC_INVALID_FIELD_IN_PARAMETER_LIST = 0x26;
export const ASC_WRITE_PROTECTED = 0x27;
export const ASCQ_SPACE_ALLOCATION_FAILED_WRITE_PROTECT = 0x07;
export const ASC_POWER_ON_RESET = 0x29;
export const ASC_PARAMETERS_CHANGED = 0x2a;
export const ASCQ_CAPACITY_DATA_HAS_CHANGED = 0x09;
export const ASC_MEDIUM_NOT_PRESENT = 0x3a;
export const ASC_TARGET_OPERATING_CONDITIONS_CHANGED = 0x3f;
export const ASCQ_INQUIRY_DATA_HAS_CHANGED = 0x03;
export const ASCQ_REPORTED_LUNS_DATA_HAS_CHANGED = 0x0e;
export const ASC_THIN_PROVISIONING_SOFT_THRESHOLD = 0x38;

/**
 * Text for common ASC/ASCQ pairs (SPC-4 Annex D), keyed (asc << 8) | ascq. Not exhaustive: the
 * pairs a block-device initiator meets in practice.
 */
const ASC_TEXT: ReadonlyMap<number, string> = new Map([
  [0x0000, 'No additional sense information'],
  [0x0006, 'I/O process terminated'],
  [0x0016, 'Operation in progress'],
  [0x0017, 'Cleaning requested'],
  [0x0400, 'Logical unit not ready, cause not reportable'],
  [0x0401, 'Logical unit is in process of becoming ready'],
  [0x0402, 'Logical unit not ready, initializing command required'],
  [0x0403, 'Logical unit not ready, manual intervention required'],
  [0x0404, 'Logical unit not ready, format in progress'],
  [0x0407, 'Logical unit not ready, operation in progress'],
  [0x0409, 'Logical unit not ready, self-test in progress'],
  [0x040a, 'Logical unit not accessible, asymmetric access state transition'],
  [0x040b, 'Logical unit not accessible, target port in standby state'],
  [0x040c, 'Logical unit not accessible, target port in unavailable state'],
  [0x0412, 'Logical unit not ready, offline'],
  [0x0800, 'Logical unit communication failure'],
  [0x0801, 'Logical unit communication time-out'],
  [0x0c00, 'Write error'],
  [0x0c02, 'Write error - auto reallocation failed'],
  [0x1000, 'ID CRC or ECC error'],
  [0x1001, 'Logical block guard check failed'],
  [0x1002, 'Logical block application tag check failed'],
  [0x1003, 'Logical block reference tag check failed'],
  [0x1100, 'Unrecovered read error'],
  [0x1400, 'Recorded entity not found'],
  [0x1401, 'Record not found'],
  [0x1a00, 'Parameter list length error'],
  [0x1d00, 'Miscompare during verify operation'],
  [0x2000, 'Invalid command operation code'],
  [0x2100, 'Logical block address out of range'],
  [0x2400, 'Invalid field in CDB'],
  [0x2500, 'Logical unit not supported'],
  [0x2600, 'Invalid field in parameter list'],
  [0x2601, 'Parameter not supported'],
  [0x2602, 'Parameter value invalid'],
  [0x2700, 'Write protected'],
  [0x2701, 'Hardware write protected'],
  [0x2702, 'Logical unit software write protected'],
  [0x2707, 'Space allocation failed write protect'],
  [0x2800, 'Not ready to ready change, medium may have changed'],
  [0x2900, 'Power on, reset, or bus device reset occurred'],
  [0x2901, 'Power on occurred'],
  [0x2902, 'SCSI bus reset occurred'],
  [0x2903, 'Bus device reset function occurred'],
  [0x2904, 'Device internal reset'],
  [0x2907, 'I_T nexus loss occurred'],
  [0x2a00, 'Parameters changed'],
  [0x2a01, 'Mode parameters changed'],
  [0x2a02, 'Log parameters changed'],
  [0x2a03, 'Reservations preempted'],
  [0x2a04, 'Reservations released'],
  [0x2a05, 'Registrations preempted'],
  [0x2a06, 'Asymmetric access state changed'],
  [0x2a09, 'Capacity data has changed'],
  [0x2a10, 'Timestamp changed'],
  [0x2c00, 'Command sequence error'],
  [0x2f00, 'Commands cleared by another initiator'],
  [0x2f01, 'Commands cleared by power loss notification'],
  [0x3100, 'Medium format corrupted'],
  [0x3800, 'Thin provisioning soft threshold reached'],
  [0x3807, 'Thin provisioning soft threshold reached'],
  [0x3a00, 'Medium not present'],
  [0x3e00, 'Logical unit has not self-configured yet'],
  [0x3e01, 'Logical unit failure'],
  [0x3e02, 'Timeout on logical unit'],
  [0x3f00, 'Target operating conditions have changed'],
  [0x3f01, 'Microcode has been changed'],
  [0x3f03, 'Inquiry data has changed'],
  [0x3f0e, 'Reported LUNs data has changed'],
  [0x3f0f, 'Echo buffer overwritten'],
  [0x4400, 'Internal target failure'],
  [0x4700, 'SCSI parity error'],
  [0x4b00, 'Data phase error'],
  [0x4c00, 'Logical unit failed self-configuration'],
  [0x5300, 'Media load or eject failed'],
  [0x5500, 'System resource failure'],
  [0x5d00, 'Failure prediction threshold exceeded'],
  [0x5e00, 'Low power condition on'],
]);

/** Human-readable text for an ASC/ASCQ pair (falls back to the raw hex). */
export function scsiSenseText(asc: number, ascq: number): string {
  const text = ASC_TEXT.get(((asc & 0xff) << 8) | (ascq & 0xff));
  if (text !== undefined) return text;
  const a = hex2(asc);
  const q = hex2(ascq);
  if (asc === 0x40 && ascq >= 0x80) return `Diagnostic failure on component ${q}h`;
  if (ascq >= 0x80) return `Vendor specific ASC ${a}h ASCQ ${q}h`;
  return `ASC ${a}h ASCQ ${q}h`;
}

/* ------------------------------------------------------------------------------------------ */
/* nameOf…() helpers for logs.                                                                 */
/* ------------------------------------------------------------------------------------------ */

function hex2(n: number): string {
  return (n & 0xff).toString(16).padStart(2, '0');
}

function table(entries: Record<string, number>): Map<number, string> {
  const m = new Map<number, string>();
  for (const [k, v] of Object.entries(entries)) if (!m.has(v)) m.set(v, k);
  return m;
}

const OPCODE_NAMES = table({
  TEST_UNIT_READY,
  REQUEST_SENSE,
  INQUIRY,
  MODE_SENSE,
  READ_CAPACITY,
  READ_10,
  WRITE_10,
  SYNCHRONIZE_CACHE,
  WRITE_SAME,
  UNMAP,
  MODE_SENSE_10,
  PERSISTENT_RESERVE_IN,
  PERSISTENT_RESERVE_OUT,
  READ_16,
  COMPARE_AND_WRITE,
  WRITE_16,
  VERIFY_16,
  SYNCHRONIZE_CACHE_16,
  WRITE_SAME_16,
  SERVICE_ACTION_IN_16,
  REPORT_LUNS,
  MAINTENANCE_IN,
});

const STATUS_NAMES = table({
  SAM_STAT_GOOD,
  SAM_STAT_CHECK_CONDITION,
  SAM_STAT_CONDITION_MET,
  SAM_STAT_BUSY,
  SAM_STAT_INTERMEDIATE,
  SAM_STAT_INTERMEDIATE_CONDITION_MET,
  SAM_STAT_RESERVATION_CONFLICT,
  SAM_STAT_COMMAND_TERMINATED,
  SAM_STAT_TASK_SET_FULL,
  SAM_STAT_ACA_ACTIVE,
  SAM_STAT_TASK_ABORTED,
});

const SENSE_KEY_NAMES = table({
  NO_SENSE,
  RECOVERED_ERROR,
  NOT_READY,
  MEDIUM_ERROR,
  HARDWARE_ERROR,
  ILLEGAL_REQUEST,
  UNIT_ATTENTION,
  DATA_PROTECT,
  BLANK_CHECK,
  VENDOR_SPECIFIC,
  COPY_ABORTED,
  ABORTED_COMMAND,
  VOLUME_OVERFLOW,
  MISCOMPARE,
});

const DEVICE_TYPE_NAMES = table({
  TYPE_DISK,
  TYPE_TAPE,
  TYPE_PRINTER,
  TYPE_PROCESSOR,
  TYPE_WORM,
  TYPE_ROM,
  TYPE_SCANNER,
  TYPE_MOD,
  TYPE_MEDIUM_CHANGER,
  TYPE_COMM,
  TYPE_RAID,
  TYPE_ENCLOSURE,
  TYPE_RBC,
  TYPE_OSD,
  TYPE_ZBC,
  TYPE_WLUN,
  TYPE_NO_LUN,
});

const DESIGNATOR_TYPE_NAMES = table({
  DESIGNATOR_VENDOR_SPECIFIC,
  DESIGNATOR_T10_VENDOR_ID,
  DESIGNATOR_EUI64,
  DESIGNATOR_NAA,
  DESIGNATOR_RELATIVE_TARGET_PORT,
  DESIGNATOR_TARGET_PORT_GROUP,
  DESIGNATOR_LOGICAL_UNIT_GROUP,
  DESIGNATOR_MD5_LOGICAL_UNIT,
  DESIGNATOR_SCSI_NAME_STRING,
  DESIGNATOR_PROTOCOL_SPECIFIC_PORT,
  DESIGNATOR_UUID,
});

const VPD_NAMES = table({
  VPD_SUPPORTED_PAGES,
  VPD_UNIT_SERIAL_NUMBER,
  VPD_DEVICE_IDENTIFICATION,
  VPD_BLOCK_LIMITS,
  VPD_BLOCK_DEVICE_CHARACTERISTICS,
  VPD_LOGICAL_BLOCK_PROVISIONING,
});

const ASSOCIATION_NAMES = table({
  ASSOCIATION_LOGICAL_UNIT,
  ASSOCIATION_TARGET_PORT,
  ASSOCIATION_TARGET_DEVICE,
});

const CODE_SET_NAMES = table({ CODE_SET_BINARY, CODE_SET_ASCII, CODE_SET_UTF8 });

/** Name of a CDB opcode, e.g. "READ_16"; SERVICE ACTION IN(16) names its service action when given. */
export function nameOfScsiOpcode(opcode: number, serviceAction?: number): string {
  if (opcode === SERVICE_ACTION_IN_16 && serviceAction === SAI_READ_CAPACITY_16) return 'READ_CAPACITY_16';
  return OPCODE_NAMES.get(opcode) ?? `OPCODE_<0x${hex2(opcode)}>`;
}

/** Name of the command a CDB carries (looks at the service action of SERVICE ACTION IN(16)). */
export function nameOfCdb(cdb: Uint8Array): string {
  if (cdb.length === 0) return 'EMPTY_CDB';
  const op = cdb[0]!;
  return nameOfScsiOpcode(op, op === SERVICE_ACTION_IN_16 && cdb.length > 1 ? cdb[1]! & 0x1f : undefined);
}

/** Name of a SAM status byte, e.g. "SAM_STAT_BUSY". */
export function nameOfSamStatus(status: number): string {
  return STATUS_NAMES.get(status) ?? `SAM_STAT_<0x${hex2(status)}>`;
}

/** Name of a sense key, e.g. "UNIT_ATTENTION". */
export function nameOfSenseKey(key: number): string {
  return SENSE_KEY_NAMES.get(key) ?? `SENSE_KEY_<0x${(key & 0xf).toString(16)}>`;
}

/** Name of a peripheral device type, e.g. "TYPE_DISK". */
export function nameOfDeviceType(type: number): string {
  return DEVICE_TYPE_NAMES.get(type) ?? `TYPE_<0x${hex2(type)}>`;
}

/** Name of a designator type of the Device Identification VPD page, e.g. "DESIGNATOR_NAA". */
export function nameOfDesignatorType(type: number): string {
  return DESIGNATOR_TYPE_NAMES.get(type) ?? `DESIGNATOR_<0x${(type & 0xf).toString(16)}>`;
}

/** Name of a VPD page code, e.g. "VPD_BLOCK_LIMITS". */
export function nameOfVpdPage(page: number): string {
  return VPD_NAMES.get(page) ?? `VPD_<0x${hex2(page)}>`;
}

/** Name of a designator association, e.g. "ASSOCIATION_LOGICAL_UNIT". */
export function nameOfAssociation(assoc: number): string {
  return ASSOCIATION_NAMES.get(assoc) ?? `ASSOCIATION_<${assoc}>`;
}

/** Name of a designator code set, e.g. "CODE_SET_BINARY". */
export function nameOfCodeSet(codeSet: number): string {
  return CODE_SET_NAMES.get(codeSet) ?? `CODE_SET_<${codeSet}>`;
}

/**
 * The RDMA channel transport over the native addon (librdmacm + libibverbs), and the daemon's
 * connector built on it. One file per unit:
 *   channel.ts          RdmaChannelTransport: one RC QP and its rdma_cm id as a ChannelTransport
 *   connector.ts        RdmaConnector / createRdmaConnector: channels to one target, port ids, path-up
 *   async-event-hub.ts  one device async event poller shared by every channel and connector
 *   parked-ids.ts       cm ids of channels lost on a downed port, torn down on PORT_ACTIVE
 *   verbs-resources.ts  VerbsResources: a channel's rdma_cm and verbs resources, created and freed as one
 *   options.ts          the transport's options, defaults and bounds (the daemon's come from here)
 */
export { RdmaChannelTransport } from './channel.js';
export type { RdmaChannelEvents } from './channel.js';
export { createRdmaConnector, hostPortGuid, RdmaConnector } from './connector.js';
export type { RdmaCmTargetAddress, RdmaConnectorOptions } from './connector.js';
export { ACK_TIMEOUT, RETRY_COUNT } from './options.js';
export type { RdmaTransportOptions } from './options.js';
export { parkedCmIds } from './parked-ids.js';
export { checkRdmaAvailable, RdmaUnavailableError } from './verbs-resources.js';

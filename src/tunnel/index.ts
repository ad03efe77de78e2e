export {
  addressText,
  Forward,
  isOverBudget,
  type ForwardStats,
  type ListenOn,
  type LocalAddress,
  type OpenRemote,
} from './forward.js'
export { ChannelBudget, descriptorLimit, rootBudget } from './budget.js'
export { noteCarried } from './heap-release.js'
export { LinkPool, routeKey, sameServer, type LinkPoolOptions } from './links.js'
export {
  Tunnel,
  openTunnel,
  type ForwardInfo,
  type ListenKind,
  type OpenTunnelOptions,
  type TunnelEvents,
} from './tunnel.js'
export { defaultOutDir, defaultOutPath, defaultRuntimeDir } from './paths.js'
export { chooseDestination, type DestinationChoice } from './destination.js'
export { CopyClaim, holderText, whenReleased, type ClaimOptions, type CopyHolder } from './claim.js'
export { type CopyRecorder, type CopyState } from './copy.js'

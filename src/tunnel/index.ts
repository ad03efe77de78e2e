export { Forward, type ForwardStats, type OpenRemote } from './forward.js'
export { LinkPool, routeKey } from './links.js'
export { Tunnel, openTunnel, type ForwardInfo, type OpenTunnelOptions, type TunnelEvents } from './tunnel.js'
export { defaultOutDir, defaultOutPath } from './paths.js'

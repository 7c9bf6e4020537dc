export { RedisTier, type RedisTierOptions, type NamespaceTtl } from './redis-tier.js';
export {
  resolveConnection,
  isClientInstance,
  isClusterInstance,
  type RedisConnection,
  type ClusterConnection,
  type RedisClient,
  type RedisClientLike,
} from './connection.js';
export { DefaultKeyScheme, UblkSectorKeyScheme, escapeGlob, type KeyScheme, type KeySchemeName } from './key-scheme.js';
export { VALUE_HEADER_BYTES, VALUE_FORMAT_VERSION, encodeValue, decodeValueInto, decodeRawInto } from './value-format.js';
export { mapRedisError } from './redis-errors.js';

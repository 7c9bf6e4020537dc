export { RedisServer, RedisCluster, startRedisServer, startRedisCluster, ensureRedisServer, freePort, type RedisServerOptions } from './redis-server.js';

package schema

// LockKey lets tests hold the migration lock the way another instance would.
const LockKey = lockKey

"""Where message bodies live, behind one small interface (:mod:`pillarbox.blobs.api`):
files in a directory (the Maildir, today's layout) or objects in an S3-compatible store
with a bounded local read cache. Storage: no protocol imports this package."""

-- ARGV: prefix, owner, id
drop(ARGV[2], ARGV[3])

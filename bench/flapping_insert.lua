-- sysbench script for bench/flapping.py: autocommit INSERTs (auto-increment ids, text protocol)
-- that survive a backend that dies. sysbench 1.0.20's own reconnect (--mysql-ignore-errors with
-- 2013) crashes when the server is still down, and a lost connection without it ends the run
-- without totals; here a failed INSERT closes the connection and the thread reconnects until it
-- can. Each thread prints how many INSERTs were acknowledged (OK received) when it ends.

local ffi = require("ffi")
ffi.cdef("int usleep(unsigned int usec);")

sysbench.cmdline.options = {
   tables = {"Number of tables", 4},
   table_size = {"Rows per table (k values)", 1000},
}

local function connect()
   while true do
      local ok, c = pcall(drv.connect, drv)
      if ok and c then
         return c
      end
      ffi.C.usleep(50000)
   end
end

function thread_init()
   drv = sysbench.sql.driver()
   con = connect()
   acked, failed = 0, 0
end

function event()
   local sql = string.format("INSERT INTO sbtest%d (k, c, pad) VALUES (%d, '%s', 'flap')",
                             sysbench.rand.uniform(1, sysbench.opt.tables),
                             sysbench.rand.default(1, sysbench.opt.table_size),
                             sysbench.rand.string("###########-###########"))
   local ok = pcall(con.query, con, sql)
   if ok then
      acked = acked + 1
   else
      failed = failed + 1
      pcall(con.disconnect, con)
      con = connect()
   end
end

function thread_done()
   print(string.format("flapping: thread acked %d failed %d", acked, failed))
   pcall(con.disconnect, con)
end

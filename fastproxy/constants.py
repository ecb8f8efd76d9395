"""Every protocol number, named once.

Spec: https://dev.mysql.com/doc/dev/mysql-server/latest/PAGE_PROTOCOL.html and
https://mariadb.com/kb/en/clientserver-protocol/
"""

MAX_PACKET_PAYLOAD = 0xFFFFFF  # a payload of exactly this length is continued in the next packet


class CLIENT:
    LONG_PASSWORD = 1
    FOUND_ROWS = 1 << 1
    LONG_FLAG = 1 << 2
    CONNECT_WITH_DB = 1 << 3
    NO_SCHEMA = 1 << 4
    COMPRESS = 1 << 5
    ODBC = 1 << 6
    LOCAL_FILES = 1 << 7
    IGNORE_SPACE = 1 << 8
    PROTOCOL_41 = 1 << 9
    INTERACTIVE = 1 << 10
    SSL = 1 << 11
    IGNORE_SIGPIPE = 1 << 12
    TRANSACTIONS = 1 << 13
    RESERVED = 1 << 14
    SECURE_CONNECTION = 1 << 15
    MULTI_STATEMENTS = 1 << 16
    MULTI_RESULTS = 1 << 17
    PS_MULTI_RESULTS = 1 << 18
    PLUGIN_AUTH = 1 << 19
    CONNECT_ATTRS = 1 << 20
    PLUGIN_AUTH_LENENC_CLIENT_DATA = 1 << 21
    CAN_HANDLE_EXPIRED_PASSWORDS = 1 << 22
    SESSION_TRACK = 1 << 23
    DEPRECATE_EOF = 1 << 24
    OPTIONAL_RESULTSET_METADATA = 1 << 25
    ZSTD_COMPRESSION_ALGORITHM = 1 << 26
    QUERY_ATTRIBUTES = 1 << 27
    MULTI_FACTOR_AUTHENTICATION = 1 << 28
    SSL_VERIFY_SERVER_CERT = 1 << 30
    REMEMBER_OPTIONS = 1 << 31
    # MariaDB's extended capabilities live in the upper 32 bits (sent in the greeting's filler).
    MARIADB_PROGRESS = 1 << 32
    MARIADB_COM_MULTI = 1 << 33
    MARIADB_STMT_BULK_OPERATIONS = 1 << 34
    MARIADB_EXTENDED_METADATA = 1 << 35
    MARIADB_CACHE_METADATA = 1 << 36

    # What the proxy strips from the server's greeting, and why (README, "Protocol support"):
    #  COMPRESS/ZSTD: the proxy must read packets; compressed frames would hide them.
    #  SSL: the proxy terminates TLS on each side itself (fastproxy/proxy/tls_upgrade.py): it offers
    #  SSL to clients only when security.server-tls is set, whatever the backend offers.
    #  QUERY_ATTRIBUTES / OPTIONAL_RESULTSET_METADATA: change COM_QUERY / result layouts.
    #  MariaDB PROGRESS: progress reports arrive as 0xFF packets inside a result.
    #  MariaDB CACHE_METADATA / COM_MULTI / BULK: change result and command layouts.
    #  MariaDB extended capabilities are all stripped: the ones above change layouts, and the rest
    #  (extended type info, newer ones) are not worth an untested path.
    MARIADB_EXTENDED_ALL = 0xFFFFFFFF << 32
    PROXY_STRIPPED = (
        COMPRESS | ZSTD_COMPRESSION_ALGORITHM | SSL | SSL_VERIFY_SERVER_CERT | QUERY_ATTRIBUTES
        | OPTIONAL_RESULTSET_METADATA | MULTI_FACTOR_AUTHENTICATION | MARIADB_EXTENDED_ALL
    )


class COMMAND:
    COM_SLEEP = 0x00
    COM_QUIT = 0x01
    COM_INIT_DB = 0x02
    COM_QUERY = 0x03
    COM_FIELD_LIST = 0x04
    COM_CREATE_DB = 0x05
    COM_DROP_DB = 0x06
    COM_REFRESH = 0x07
    COM_SHUTDOWN = 0x08
    COM_STATISTICS = 0x09
    COM_PROCESS_INFO = 0x0A
    COM_CONNECT = 0x0B
    COM_PROCESS_KILL = 0x0C
    COM_DEBUG = 0x0D
    COM_PING = 0x0E
    COM_TIME = 0x0F
    COM_DELAYED_INSERT = 0x10
    COM_CHANGE_USER = 0x11
    COM_BINLOG_DUMP = 0x12
    COM_TABLE_DUMP = 0x13
    COM_CONNECT_OUT = 0x14
    COM_REGISTER_SLAVE = 0x15
    COM_STMT_PREPARE = 0x16
    COM_STMT_EXECUTE = 0x17
    COM_STMT_SEND_LONG_DATA = 0x18
    COM_STMT_CLOSE = 0x19
    COM_STMT_RESET = 0x1A
    COM_SET_OPTION = 0x1B
    COM_STMT_FETCH = 0x1C
    COM_DAEMON = 0x1D
    COM_BINLOG_DUMP_GTID = 0x1E
    COM_RESET_CONNECTION = 0x1F
    COM_STMT_BULK_EXECUTE = 0xFA  # MariaDB


COMMAND_NAMES = {v: k for k, v in vars(COMMAND).items() if k.startswith("COM_")}


def command_name(cmd: int) -> str:
    return COMMAND_NAMES.get(cmd, f"COM_UNKNOWN_{cmd:#04x}")


class SERVER_STATUS:
    IN_TRANS = 0x0001
    AUTOCOMMIT = 0x0002
    MORE_RESULTS_EXISTS = 0x0008
    NO_GOOD_INDEX_USED = 0x0010
    NO_INDEX_USED = 0x0020
    CURSOR_EXISTS = 0x0040
    LAST_ROW_SENT = 0x0080
    DB_DROPPED = 0x0100
    NO_BACKSLASH_ESCAPES = 0x0200
    METADATA_CHANGED = 0x0400
    QUERY_WAS_SLOW = 0x0800
    PS_OUT_PARAMS = 0x1000
    IN_TRANS_READONLY = 0x2000
    SESSION_STATE_CHANGED = 0x4000


class SESSION_TRACK:
    SYSTEM_VARIABLES = 0
    SCHEMA = 1
    STATE_CHANGE = 2
    GTIDS = 3
    TRANSACTION_CHARACTERISTICS = 4
    TRANSACTION_STATE = 5


# Collation ids (the handshake's one-byte charset) of client character sets with two-byte
# characters whose second byte may be 0x5C ('\\') or 0x60 ('`'): SQL must be read by character,
# not by byte, to know where a string ends (fastproxy/secret_sql.py). Values: the family.
TWO_BYTE_CHARSET_COLLATIONS = {
    1: "big5", 84: "big5",                          # big5_chinese_ci, big5_bin
    28: "gbk", 87: "gbk",                           # gbk_chinese_ci, gbk_bin
    248: "gbk", 249: "gbk", 250: "gbk",             # gb18030 (MySQL 8): reads like gbk here
    13: "sjis", 88: "sjis", 95: "sjis", 96: "sjis",  # sjis_japanese_ci, sjis_bin, cp932_*
}


class ER:
    """Server error codes the proxy itself sends or reasons about."""

    CON_COUNT_ERROR = 1040  # Too many connections
    HANDSHAKE_ERROR = 1043  # Bad handshake
    ACCESS_DENIED_ERROR = 1045
    UNKNOWN_ERROR = 1105
    HOST_NOT_PRIVILEGED = 1130  # Host '...' is not allowed to connect
    UNKNOWN_COM_ERROR = 1047
    SERVER_SHUTDOWN = 1053
    NET_PACKET_TOO_LARGE = 1153
    CONNECTION_KILLED = 1927  # MariaDB
    QUERY_INTERRUPTED = 1317
    # The errors the proxy itself sends carry a server error code: libmariadb reports any client-range
    # code (2000-2999, e.g. 2003, 2013) received from a server as "Received malformed packet" (2027).
    UNKNOWN_ERROR = 1105
    LOCK_WAIT_TIMEOUT = 1205  # rolls back the statement (the transaction too with innodb_rollback_on_timeout)
    LOCK_DEADLOCK = 1213      # rolls back the whole transaction


class CR:
    """Client-side error codes (libmysqlclient), used by the replay client for network failures."""

    CONNECTION_ERROR = 2002
    CONN_HOST_ERROR = 2003
    SERVER_GONE_ERROR = 2006
    SERVER_LOST = 2013


# First byte of a server packet.
OK_HEADER = 0x00
AUTH_MORE_DATA_HEADER = 0x01
LOCAL_INFILE_HEADER = 0xFB
EOF_HEADER = 0xFE
ERR_HEADER = 0xFF

# COM_STMT_EXECUTE flags byte
CURSOR_TYPE_NO_CURSOR = 0
CURSOR_TYPE_READ_ONLY = 1

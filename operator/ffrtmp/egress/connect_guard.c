/* ffrtmp connect guard: preloaded (LD_PRELOAD) into every ffmpeg and ffprobe a worker starts, so the
 * egress check holds for every connection ffmpeg itself makes, not only for those it sends through
 * the worker's egress proxy (ffrtmp/egress/guard.py builds the environment, docs/SECURITY.md).
 *
 * What it guards: connect(), and sendto(), sendmsg() and sendmmsg() that name a destination
 * (unconnected UDP, TCP Fast Open). An IPv4 or IPv6 destination must be listed in
 * FFRTMP_CONNECT_ALLOW, read once at load time: comma-separated ADDRESS:PORT entries, IPv6 in
 * brackets ("127.0.0.1:41234,[2001:db8::1]:1935"); an IPv4-mapped IPv6 address is judged as the IPv4
 * address. No variable, or an entry that does not parse, allows less, never more. AF_UNIX, AF_NETLINK
 * and AF_UNSPEC (which dissolves an association) pass; every other family is refused. A refusal fails
 * with EACCES, the errno of a policy refusal ("Permission denied"), not ECONNREFUSED, which would read
 * as "nothing listens there" and invite retries. Each refusal appends "ADDRESS PORT\n" to the file
 * FFRTMP_CONNECT_REPORT names, so the worker can report it as the job's DestinationNotAllowed (and
 * prints a line without the address to stderr, which the job's author sees).
 *
 * What it does not guard: the C library's internal calls (its DNS resolver reaches the nameservers of
 * /etc/resolv.conf, which the job does not choose), raw syscalls, io_uring, a statically linked
 * program, a process started without LD_PRELOAD. Getting past it needs code execution inside ffmpeg;
 * the chart's NetworkPolicy is the kernel-level backstop for that.
 *
 * Build: cc -Wall -Wextra -O2 -fPIC -shared -o connect-guard.so connect_guard.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_ENTRIES 64

struct entry {
    int family;
    unsigned char address[16];
    unsigned short port;
};

static struct entry allowed[MAX_ENTRIES];
static int entries;
static const char *report_path;

static int parse_entry(const char *text, size_t length, struct entry *out)
{
    char buffer[64];
    char *host = buffer, *port_text;
    char *end;
    long port;

    if (length == 0 || length >= sizeof buffer)
        return 0;
    memcpy(buffer, text, length);
    buffer[length] = '\0';
    if (buffer[0] == '[') {
        char *close = strchr(buffer, ']');
        if (close == NULL || close[1] != ':')
            return 0;
        *close = '\0';
        host = buffer + 1;
        port_text = close + 2;
        out->family = AF_INET6;
    } else {
        port_text = strrchr(buffer, ':');
        if (port_text == NULL)
            return 0;
        *port_text++ = '\0';
        out->family = AF_INET;
    }
    errno = 0;
    port = strtol(port_text, &end, 10);
    if (errno != 0 || end == port_text || *end != '\0' || port < 1 || port > 65535)
        return 0;
    out->port = (unsigned short)port;
    memset(out->address, 0, sizeof out->address);
    return inet_pton(out->family, host, out->address) == 1;
}

__attribute__((constructor)) static void load_allowlist(void)
{
    const char *list = getenv("FFRTMP_CONNECT_ALLOW");

    report_path = getenv("FFRTMP_CONNECT_REPORT");
    while (list != NULL && *list != '\0' && entries < MAX_ENTRIES) {
        size_t length = strcspn(list, ",");
        if (parse_entry(list, length, &allowed[entries]))
            entries++;
        else if (length > 0)
            fprintf(stderr, "ffrtmp connect guard: ignoring allowlist entry %.*s\n", (int)length, list);
        list += length;
        if (*list == ',')
            list++;
    }
}

static int listed(int family, const void *address, unsigned short port)
{
    size_t size = family == AF_INET ? 4 : 16;

    for (int i = 0; i < entries; i++)
        if (allowed[i].family == family && allowed[i].port == port && memcmp(allowed[i].address, address, size) == 0)
            return 1;
    return 0;
}

static void report(int family, const void *address, unsigned short port)
{
    char text[INET6_ADDRSTRLEN + 16];
    char host[INET6_ADDRSTRLEN];
    int fd, length;

    if (inet_ntop(family, address, host, sizeof host) == NULL)
        return;
    length = snprintf(text, sizeof text, "%s %u\n", host, port);
    /* No address here: ffmpeg's stderr reaches the job's author, and the address may be what an internal
     * name resolves to. The report file goes to the worker only. */
    fputs("ffrtmp connect guard: refused a connection that does not go through the egress proxy\n", stderr);
    if (report_path == NULL || length <= 0)
        return;
    fd = open(report_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    if (write(fd, text, (size_t)length) < 0) {
        /* nothing more to do: the connection is refused either way */
    }
    close(fd);
}

/* Whether a destination may be used; reports it when not. A missing address (a connected socket's
 * send) is the kernel's business. */
static int permitted(const struct sockaddr *destination, socklen_t length)
{
    sa_family_t family;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;

    if (destination == NULL || length < sizeof family)
        return 1;
    memcpy(&family, &destination->sa_family, sizeof family);
    switch (family) {
    case AF_UNIX:
    case AF_NETLINK:
    case AF_UNSPEC:
        return 1;
    case AF_INET:
        if (length < sizeof in)
            return 0;
        memcpy(&in, destination, sizeof in);
        if (listed(AF_INET, &in.sin_addr, ntohs(in.sin_port)))
            return 1;
        report(AF_INET, &in.sin_addr, ntohs(in.sin_port));
        return 0;
    case AF_INET6:
        if (length < sizeof in6)
            return 0;
        memcpy(&in6, destination, sizeof in6);
        if (IN6_IS_ADDR_V4MAPPED(&in6.sin6_addr)) {
            if (listed(AF_INET, &in6.sin6_addr.s6_addr[12], ntohs(in6.sin6_port)))
                return 1;
            report(AF_INET, &in6.sin6_addr.s6_addr[12], ntohs(in6.sin6_port));
            return 0;
        }
        if (listed(AF_INET6, &in6.sin6_addr, ntohs(in6.sin6_port)))
            return 1;
        report(AF_INET6, &in6.sin6_addr, ntohs(in6.sin6_port));
        return 0;
    default:
        return 0;
    }
}

static void *next(const char *name)
{
    void *function = dlsym(RTLD_NEXT, name);

    if (function == NULL)
        abort(); /* no C library below us: nothing can connect safely */
    return function;
}

int connect(int fd, const struct sockaddr *destination, socklen_t length)
{
    static int (*real)(int, const struct sockaddr *, socklen_t);

    if (!permitted(destination, length)) {
        errno = EACCES;
        return -1;
    }
    if (real == NULL)
        real = (int (*)(int, const struct sockaddr *, socklen_t))next("connect");
    return real(fd, destination, length);
}

ssize_t sendto(int fd, const void *buffer, size_t size, int flags, const struct sockaddr *destination,
               socklen_t length)
{
    static ssize_t (*real)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);

    if (!permitted(destination, length)) {
        errno = EACCES;
        return -1;
    }
    if (real == NULL)
        real = (ssize_t(*)(int, const void *, size_t, int, const struct sockaddr *, socklen_t))next("sendto");
    return real(fd, buffer, size, flags, destination, length);
}

ssize_t sendmsg(int fd, const struct msghdr *message, int flags)
{
    static ssize_t (*real)(int, const struct msghdr *, int);

    if (message != NULL && !permitted(message->msg_name, message->msg_namelen)) {
        errno = EACCES;
        return -1;
    }
    if (real == NULL)
        real = (ssize_t(*)(int, const struct msghdr *, int))next("sendmsg");
    return real(fd, message, flags);
}

int sendmmsg(int fd, struct mmsghdr *messages, unsigned int count, int flags)
{
    static int (*real)(int, struct mmsghdr *, unsigned int, int);

    for (unsigned int i = 0; messages != NULL && i < count; i++)
        if (!permitted(messages[i].msg_hdr.msg_name, messages[i].msg_hdr.msg_namelen)) {
            errno = EACCES;
            return -1;
        }
    if (real == NULL)
        real = (int (*)(int, struct mmsghdr *, unsigned int, int))next("sendmmsg");
    return real(fd, messages, count, flags);
}

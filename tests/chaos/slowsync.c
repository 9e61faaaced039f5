/* slowsync: an LD_PRELOAD shim that delays fsync, fdatasync and msync (the chaos suite's
 * slow-disk fault, tests/chaos/slowdisk.py).
 *
 * The delay comes from a control file whose path is in the environment variable
 * RAFTMQ_SLOWSYNC_FILE: its first line is "MIN_MS MAX_MS" (or one number, or empty / missing:
 * no delay). Each call sleeps a uniformly drawn delay in [MIN_MS, MAX_MS] before calling the real
 * function. The file is read again at most every 100 ms (and only when its mtime or size
 * changed), so the harness switches the delay on and off without restarting the process.
 * Every delayed call adds a line to the file named by RAFTMQ_SLOWSYNC_LOG, if set
 * ("<unix time> <calls delayed so far> <ms slept so far>"; only delayed calls, which take
 * 50 ms or more anyway, so the cost does not matter).
 *
 * Build: gcc -shared -fPIC -O2 -o slowsync.so slowsync.c -ldl -lpthread
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static double last_check;  /* monotonic seconds */
static struct timespec last_mtime;
static off_t last_size = -1;
static long min_ms, max_ms;
static unsigned long long delayed_calls, slept_ms;
static unsigned int seed;

static double now_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void reload(void) {
    const char *path = getenv("RAFTMQ_SLOWSYNC_FILE");
    struct stat st;
    if (path == NULL || stat(path, &st) != 0) {
        min_ms = max_ms = 0;
        last_size = -1;
        return;
    }
    if (st.st_size == last_size && st.st_mtim.tv_sec == last_mtime.tv_sec &&
        st.st_mtim.tv_nsec == last_mtime.tv_nsec)
        return;
    last_size = st.st_size;
    last_mtime = st.st_mtim;
    long a = 0, b = 0;
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        min_ms = max_ms = 0;
        return;
    }
    int n = fscanf(f, "%ld %ld", &a, &b);
    fclose(f);
    if (n < 1 || a < 0) a = 0;
    if (n < 2 || b < a) b = a;
    if (b > 60000) b = 60000;
    if (a > b) a = b;
    min_ms = a;
    max_ms = b;
}

/* The delay for this call, in ms (0: none). */
static long draw_delay(void) {
    int saved = errno;
    long ms = 0;
    pthread_mutex_lock(&lock);
    double t = now_mono();
    if (t - last_check >= 0.1 || last_check == 0) {
        last_check = t;
        reload();
    }
    if (max_ms > 0) {
        if (seed == 0) seed = (unsigned int)getpid() ^ (unsigned int)(t * 1e6);
        ms = min_ms + (max_ms > min_ms ? (long)(rand_r(&seed) % (max_ms - min_ms + 1)) : 0);
        delayed_calls++;
        slept_ms += (unsigned long long)ms;
        const char *logp = getenv("RAFTMQ_SLOWSYNC_LOG");
        if (logp != NULL) {
            FILE *lf = fopen(logp, "a");
            if (lf != NULL) {
                fprintf(lf, "%ld %llu %llu\n", (long)time(NULL), delayed_calls, slept_ms);
                fclose(lf);
            }
        }
    }
    pthread_mutex_unlock(&lock);
    errno = saved;
    return ms;
}

static void delay(void) {
    long ms = draw_delay();
    if (ms <= 0) return;
    int saved = errno;
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
    errno = saved;
}

int fsync(int fd) {
    static int (*real)(int);
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    delay();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    delay();
    return real(fd);
}

int msync(void *addr, size_t length, int flags) {
    static int (*real)(void *, size_t, int);
    if (real == NULL) real = (int (*)(void *, size_t, int))dlsym(RTLD_NEXT, "msync");
    delay();
    return real(addr, length, flags);
}

/* Cost per call of a tight write loop: to a tmpfs file (must pay nothing
 * for the agent) and to a TCP loopback socket (pays the socket hooks).
 * Usage: writeloop file|socket CALLS  -> prints ns per call */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void *drain(void *arg) {
    int fd = *(int *)arg;
    char buf[65536];
    while (read(fd, buf, sizeof buf) > 0) {}
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s file|socket CALLS\n", argv[0]); return 2; }
    long calls = atol(argv[2]);
    char msg[64];
    memset(msg, 'x', sizeof msg);
    int fd;
    pthread_t t;
    if (strcmp(argv[1], "file") == 0) {
        char path[] = "/dev/shm/writeloop-XXXXXX";
        fd = mkstemp(path);
        unlink(path);
        double t0 = now();
        for (long i = 0; i < calls; i++) pwrite(fd, msg, sizeof msg, 0);
        printf("%.1f\n", (now() - t0) / calls);
        return 0;
    }
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t alen = sizeof a;
    bind(l, (struct sockaddr *)&a, sizeof a);
    listen(l, 1);
    getsockname(l, (struct sockaddr *)&a, &alen);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) { perror("connect"); return 1; }
    int s = accept(l, NULL, NULL);
    pthread_create(&t, NULL, drain, &s);
    double t0 = now();
    for (long i = 0; i < calls; i++) write(fd, msg, sizeof msg);
    printf("%.1f\n", (now() - t0) / calls);
    close(fd);
    pthread_join(t, NULL);
    return 0;
}

#include "loader.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "log.h"

/* The descriptor of ABI 1.0 ends at `reserved`: anything shorter was not
 * built from any version of plugin.h. */
#define MIN_DESC_SIZE offsetof(struct kfg_plugin, reserved)

int kfg_plugin_check(const struct kfg_plugin *p, size_t avail, char *why, size_t cap)
{
    if (avail < 2 * sizeof(uint32_t)) {
        snprintf(why, cap, "descriptor too small");
        return -1;
    }
    if (p->abi_major != KFG_ABI_MAJOR) {
        snprintf(why, cap, "built for plugin ABI %u.%u, this gateway speaks %u.%u "
                 "(rebuild the plugin against this gateway's kfgate/plugin.h)",
                 p->abi_major, p->abi_minor, KFG_ABI_MAJOR, KFG_ABI_MINOR);
        return -1;
    }
    if (p->abi_minor > KFG_ABI_MINOR) {
        snprintf(why, cap, "needs plugin ABI %u.%u, this gateway provides %u.%u "
                 "(upgrade the gateway)", p->abi_major, p->abi_minor,
                 KFG_ABI_MAJOR, KFG_ABI_MINOR);
        return -1;
    }
    if (p->struct_size < MIN_DESC_SIZE || p->struct_size > (1u << 16)) {
        snprintf(why, cap, "descriptor struct_size %u is invalid (at least %zu expected "
                 "for ABI %u.0)", p->struct_size, (size_t)MIN_DESC_SIZE, KFG_ABI_MAJOR);
        return -1;
    }
    if (!p->name || !*p->name || strlen(p->name) > 64) {
        snprintf(why, cap, "descriptor has no name");
        return -1;
    }
    for (const char *s = p->name; *s; s++) {
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_' || *s == '-')) {
            snprintf(why, cap, "plugin name '%s' must be lowercase a-z 0-9 _ -", p->name);
            return -1;
        }
    }
    if (p->kind != KFG_KIND_ADAPTER && p->kind != KFG_KIND_FILTER) {
        snprintf(why, cap, "plugin '%s' has unknown kind %u", p->name, p->kind);
        return -1;
    }
    if (!p->init) {
        snprintf(why, cap, "plugin '%s' has no init callback", p->name);
        return -1;
    }
    if (p->kind == KFG_KIND_ADAPTER && !p->deliver) {
        snprintf(why, cap, "adapter '%s' has no deliver callback", p->name);
        return -1;
    }
    if (p->kind == KFG_KIND_FILTER && !p->filter) {
        snprintf(why, cap, "filter '%s' has no filter callback", p->name);
        return -1;
    }
    char kwhy[200];
    if (kfg_config_keys_check(p->config, kwhy, sizeof(kwhy)) < 0) {
        snprintf(why, cap, "plugin '%s': %s", p->name, kwhy);
        return -1;
    }
    return 0;
}

static void refuse(struct kfg_plugin_set *out, const char *path, const char *reason)
{
    kfg_log(KFG_LOG_ERROR, NULL, NULL, "plugin %s refused: %s", path, reason);
    struct kfg_refused *r = realloc(out->refused, (out->nrefused + 1) * sizeof(*r));
    if (!r)
        return;
    out->refused = r;
    r[out->nrefused].path = strdup(path);
    r[out->nrefused].reason = strdup(reason);
    out->nrefused++;
}

static unsigned next_generation(const struct kfg_plugin_set *prev, const char *path)
{
    for (size_t i = 0; prev && i < prev->n; i++)
        if (strcmp(prev->v[i]->path, path) == 0)
            return prev->v[i]->generation + 1;
    return 1;
}

static struct kfg_so *load_one(const char *path, const struct stat *st,
                               struct kfg_plugin_set *out, unsigned gen)
{
    char why[512];
    int src = open(path, O_RDONLY | O_CLOEXEC);
    if (src < 0) {
        snprintf(why, sizeof(why), "cannot open: %s", strerror(errno));
        refuse(out, path, why);
        return NULL;
    }
    int mfd = memfd_create("kfgate-plugin", MFD_CLOEXEC);
    off_t left = st->st_size;
    while (mfd >= 0 && left > 0) {
        ssize_t n = sendfile(mfd, src, NULL, (size_t)left);
        if (n <= 0)
            break;
        left -= n;
    }
    close(src);
    if (mfd < 0 || left != 0) {
        snprintf(why, sizeof(why), "cannot copy for loading: %s", strerror(errno));
        if (mfd >= 0)
            close(mfd);
        refuse(out, path, why);
        return NULL;
    }
    char fdpath[64];
    snprintf(fdpath, sizeof(fdpath), "/proc/self/fd/%d", mfd);
    void *h = dlopen(fdpath, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *e = dlerror();
        /* dlerror names the memfd path; the user needs the real one. */
        const char *colon = e ? strstr(e, ": ") : NULL;
        snprintf(why, sizeof(why), "dlopen failed: %s", colon ? colon + 2 : e ? e : "?");
        close(mfd);
        refuse(out, path, why);
        return NULL;
    }
    const struct kfg_plugin *p = dlsym(h, KFG_PLUGIN_SYMBOL);
    if (!p) {
        snprintf(why, sizeof(why), "no '%s' symbol: not a kfgate plugin "
                 "(export it with KFG_PLUGIN_EXPORT)", KFG_PLUGIN_SYMBOL);
        dlclose(h);
        close(mfd);
        refuse(out, path, why);
        return NULL;
    }
    /* Read the fixed head first: struct_size tells how much more exists. */
    size_t avail = p->abi_major == KFG_ABI_MAJOR && p->struct_size >= MIN_DESC_SIZE
        ? p->struct_size : 2 * sizeof(uint32_t);
    if (kfg_plugin_check(p, avail, why, sizeof(why)) < 0) {
        dlclose(h);
        close(mfd);
        refuse(out, path, why);
        return NULL;
    }
    struct kfg_so *so = calloc(1, sizeof(*so));
    if (!so) {
        dlclose(h);
        close(mfd);
        return NULL;
    }
    size_t n = p->struct_size < sizeof(so->desc) ? p->struct_size : sizeof(so->desc);
    memcpy(&so->desc, p, n);
    so->path = strdup(path);
    so->dev = st->st_dev;
    so->ino = st->st_ino;
    so->size = st->st_size;
    so->mtime = st->st_mtim;
    so->handle = h;
    so->memfd = mfd;
    so->generation = gen;
    so->refs = 1;
    kfg_log(KFG_LOG_INFO, NULL, NULL, "plugin %s loaded: %s %s (%s, ABI %u.%u, generation %u)",
            path, so->desc.name, so->desc.version ? so->desc.version : "",
            so->desc.kind == KFG_KIND_ADAPTER ? "adapter" : "filter",
            so->desc.abi_major, so->desc.abi_minor, gen);
    return so;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int kfg_loader_scan(const char *dir, const struct kfg_plugin_set *prev,
                    struct kfg_plugin_set *out)
{
    memset(out, 0, sizeof(*out));
    DIR *d = opendir(dir);
    if (!d) {
        kfg_log(KFG_LOG_ERROR, NULL, NULL, "plugin_dir %s: %s", dir, strerror(errno));
        return -1;
    }
    char **names = NULL;
    size_t nn = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (l < 4 || strcmp(de->d_name + l - 3, ".so") != 0 || de->d_name[0] == '.')
            continue;
        char **nv = realloc(names, (nn + 1) * sizeof(*nv));
        if (!nv)
            break;
        names = nv;
        names[nn++] = strdup(de->d_name);
    }
    closedir(d);
    /* Sorted, so that which of two files claiming one name wins is stable. */
    qsort(names, nn, sizeof(*names), cmp_str);
    for (size_t i = 0; i < nn; i++) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        free(names[i]);
        struct stat st;
        if (stat(path, &st) < 0 || !S_ISREG(st.st_mode))
            continue;
        struct kfg_so *so = NULL;
        for (size_t j = 0; prev && j < prev->n; j++) {
            struct kfg_so *o = prev->v[j];
            if (strcmp(o->path, path) == 0 && o->dev == st.st_dev && o->ino == st.st_ino &&
                o->size == st.st_size && o->mtime.tv_sec == st.st_mtim.tv_sec &&
                o->mtime.tv_nsec == st.st_mtim.tv_nsec) {
                so = o;
                kfg_so_ref(so);
                break;
            }
        }
        if (!so)
            so = load_one(path, &st, out, next_generation(prev, path));
        if (!so)
            continue;
        struct kfg_so *dup = kfg_plugin_set_find(out, so->desc.name);
        if (dup) {
            char why[512];
            snprintf(why, sizeof(why), "plugin name '%s' is already provided by %s",
                     so->desc.name, dup->path);
            refuse(out, path, why);
            kfg_so_unref(so);
            continue;
        }
        struct kfg_so **nv = realloc(out->v, (out->n + 1) * sizeof(*nv));
        if (!nv) {
            kfg_so_unref(so);
            continue;
        }
        out->v = nv;
        out->v[out->n++] = so;
    }
    free(names);
    return 0;
}

void kfg_plugin_set_release(struct kfg_plugin_set *set)
{
    for (size_t i = 0; i < set->n; i++)
        kfg_so_unref(set->v[i]);
    for (size_t i = 0; i < set->nrefused; i++) {
        free(set->refused[i].path);
        free(set->refused[i].reason);
    }
    free(set->v);
    free(set->refused);
    memset(set, 0, sizeof(*set));
}

struct kfg_so *kfg_plugin_set_find(const struct kfg_plugin_set *set, const char *name)
{
    for (size_t i = 0; i < set->n; i++)
        if (strcmp(set->v[i]->desc.name, name) == 0)
            return set->v[i];
    return NULL;
}

const struct kfg_refused *kfg_plugin_set_refused_for(const struct kfg_plugin_set *set,
                                                     const char *type)
{
    size_t tl = strlen(type);
    for (size_t i = 0; i < set->nrefused; i++) {
        const char *base = strrchr(set->refused[i].path, '/');
        base = base ? base + 1 : set->refused[i].path;
        if (strncmp(base, type, tl) == 0 && strcmp(base + tl, ".so") == 0)
            return &set->refused[i];
    }
    return NULL;
}

void kfg_so_ref(struct kfg_so *so)
{
    so->refs++;
}

void kfg_so_unref(struct kfg_so *so)
{
    if (!so || --so->refs > 0)
        return;
    kfg_log(KFG_LOG_INFO, NULL, NULL, "plugin %s unloaded: %s (generation %u)",
            so->path, so->desc.name, so->generation);
    dlclose(so->handle);
    close(so->memfd);
    free(so->path);
    free(so);
}

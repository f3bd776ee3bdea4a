/*
 * Plugin loader. Every *.so in plugin_dir is examined at start and at each
 * reload; a file is (re)loaded when its identity (device, inode, size,
 * mtime) changed. Each load dlopens a private copy held in a memfd, so the
 * file in plugin_dir may be overwritten in place or replaced while the old
 * code keeps running, and two versions of one plugin can live side by side
 * during a reload. A loaded object is unloaded when its last instance is
 * destroyed and no scan lists it any more. Control loop only.
 */
#ifndef KFG_LOADER_H
#define KFG_LOADER_H

#include <sys/types.h>
#include <time.h>

#include "buf.h"
#include "kfgate/plugin.h"

struct kfg_so {
    char *path;                  /* as found in plugin_dir */
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    void *handle;
    int memfd;                   /* keeps the /proc/self/fd path unique */
    struct kfg_plugin desc;      /* normalized: missing tail zeroed */
    unsigned generation;         /* 1 for the first load of a path */
    int refs;                    /* scans that list it + instances */
};

struct kfg_refused {
    char *path;
    char *reason;
};

struct kfg_plugin_set {
    struct kfg_so **v;
    size_t n;
    struct kfg_refused *refused;
    size_t nrefused;
};

/* Scans dir. Objects of `prev` whose file did not change are reused (with a
 * new reference); others are loaded anew. Refused files are listed with the
 * reason and logged. Returns 0, or -1 if dir cannot be read (logged). */
int kfg_loader_scan(const char *dir, const struct kfg_plugin_set *prev,
                    struct kfg_plugin_set *out);
void kfg_plugin_set_release(struct kfg_plugin_set *set);
struct kfg_so *kfg_plugin_set_find(const struct kfg_plugin_set *set, const char *name);
/* The refusal of a file whose name suggests `type` (type.so), or NULL. */
const struct kfg_refused *kfg_plugin_set_refused_for(const struct kfg_plugin_set *set,
                                                     const char *type);
/* Checks a descriptor as the loader does; 0 or -1 with the reason. */
int kfg_plugin_check(const struct kfg_plugin *p, size_t avail, char *why, size_t cap);

void kfg_so_ref(struct kfg_so *so);
void kfg_so_unref(struct kfg_so *so);

#endif

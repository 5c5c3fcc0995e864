BEGIN TRANSACTION;
CREATE TABLE alembic_version (
	version_num VARCHAR(32) NOT NULL, 
	CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);
INSERT INTO "alembic_version" VALUES('v3.2.0.a');
CREATE TABLE at_confirmations (
	id INTEGER NOT NULL, 
	study_name VARCHAR(256) NOT NULL, 
	confirm_id INTEGER NOT NULL, 
	complete_trials INTEGER NOT NULL, 
	bucket INTEGER NOT NULL, 
	workload VARCHAR(64) NOT NULL, 
	trial_number INTEGER NOT NULL, 
	rank INTEGER NOT NULL, 
	speedup FLOAT NOT NULL, 
	speedup_lo FLOAT NOT NULL, 
	speedup_hi FLOAT NOT NULL, 
	level FLOAT NOT NULL, 
	repeats INTEGER NOT NULL, 
	time_ms FLOAT NOT NULL, 
	sdpa_ms FLOAT NOT NULL, 
	stop VARCHAR(32) NOT NULL, 
	hardware JSON, 
	stage VARCHAR(16), 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "at_confirmations" VALUES(1,'v1',1,3,128,'row',2,0,2.33170096567118068087e-01,2.22025948851514082216e-01,2.40728683470326221272e-01,9.5861053466796875e-01,20,3.9320750026187545334e-01,9.20705000074425183864e-02,'converged','{"device": "cpu", "cpu": "AMD EPYC", "cores": 2, "host": "vm", "platform": "Linux-6.18.44-fc-v857-x86_64-with-glibc2.36", "device_name": "AMD EPYC", "driver": null, "cuda": null, "torch_threads": 1}',NULL,'2026-11-30 15:58:20.850710');
INSERT INTO "at_confirmations" VALUES(2,'v1',1,3,128,'tri',2,0,2.34984946681594392137e-01,2.24392911351177948287e-01,2.4202375336098974623e-01,0.96142578125,12,3.88047200067376252263e-01,9.10958000531536526978e-02,'converged','{"device": "cpu", "cpu": "AMD EPYC", "cores": 2, "host": "vm", "platform": "Linux-6.18.44-fc-v857-x86_64-with-glibc2.36", "device_name": "AMD EPYC", "driver": null, "cuda": null, "torch_threads": 1}',NULL,'2026-11-30 15:58:20.850722');
INSERT INTO "at_confirmations" VALUES(3,'v1',1,3,128,'row',2,0,2.27645983940335361328e-01,2.07361182391068349373e-01,0.235682009820914,9.55171477614201291927e-01,81,4.09944332811088940626e-01,9.36230001874112788273e-02,'max_repeats','{"device": "cpu", "cpu": "AMD EPYC", "cores": 2, "host": "vm", "platform": "Linux-6.18.44-fc-v857-x86_64-with-glibc2.36", "device_name": "AMD EPYC", "driver": null, "cuda": null, "torch_threads": 1}','holdout','2026-11-30 15:58:21.221883');
INSERT INTO "at_confirmations" VALUES(4,'v1',1,3,128,'tri',2,0,2.37456033034073810128e-01,2.30160348089421123995e-01,2.43352058739690041422e-01,9.5861053466796875e-01,20,3.85442300103022716939e-01,9.21684000786626711487e-02,'converged','{"device": "cpu", "cpu": "AMD EPYC", "cores": 2, "host": "vm", "platform": "Linux-6.18.44-fc-v857-x86_64-with-glibc2.36", "device_name": "AMD EPYC", "driver": null, "cuda": null, "torch_threads": 1}','holdout','2026-11-30 15:58:21.221895');
CREATE TABLE at_measurements (
	id INTEGER NOT NULL, 
	trial_id INTEGER NOT NULL, 
	workload VARCHAR(64) NOT NULL, 
	kind VARCHAR(32) NOT NULL, 
	bucket INTEGER NOT NULL, 
	batch INTEGER NOT NULL, 
	heads INTEGER NOT NULL, 
	head_dim INTEGER NOT NULL, 
	dtype VARCHAR(16) NOT NULL, 
	mode VARCHAR(16) NOT NULL, 
	sparsity FLOAT NOT NULL, 
	time_ms FLOAT NOT NULL, 
	time_p10_ms FLOAT NOT NULL, 
	time_p90_ms FLOAT NOT NULL, 
	repeats INTEGER NOT NULL, 
	peak_mib FLOAT NOT NULL, 
	memory_method VARCHAR(32) NOT NULL, 
	sdpa_ms FLOAT, 
	sdpa_p10_ms FLOAT, 
	sdpa_p90_ms FLOAT, 
	sdpa_peak_mib FLOAT, 
	naive_ms FLOAT, 
	naive_peak_mib FLOAT, 
	speedup FLOAT, 
	speedup_lo FLOAT, 
	speedup_hi FLOAT, 
	speedup_level FLOAT, 
	timing_stop VARCHAR(32), 
	speedup_naive FLOAT, 
	memory_vs_sdpa FLOAT, 
	memory_vs_naive FLOAT, 
	accuracy JSON, 
	accuracy_metric VARCHAR(64), 
	accuracy_value FLOAT, 
	violations JSON, 
	feasible BOOLEAN NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(trial_id) REFERENCES at_trials (id)
);
INSERT INTO "at_measurements" VALUES(1,1,'row','msa_row',64,4,2,16,'float32','fwd',0.375,2.8330700024525867775e-01,2.60327700380003079771e-01,1.52304210023430908194e+00,25,0.40625,'rss_hwm',5.89179999224143102765e-02,5.60734999453416094183e-02,6.60845005768351256847e-02,0.0390625,6.36940003460040315985e-02,0.28125,2.11735171715682041204e-01,2.01918034103633847742e-01,2.21823098757909203948e-01,9.56714749336242675781e-01,'converged',2.24823249305044270407e-01,0.40625,0.40625,'null',NULL,NULL,'{"sparsity": 0.42500000000000004}',0);
INSERT INTO "at_measurements" VALUES(2,1,'tri','triangle',64,2,2,16,'float32','fwd',0.375,1.73303222153562169749e-01,1.65014266713114921003e-01,6.38501911069195404735e-01,40,0.20703125,'rss_hwm',3.19186667386222588937e-02,3.0470666832924406947e-02,8.01156443129817374959e-02,0.0234375,3.88879998354241251945e-02,0.140625,1.85813455978513120125e-01,1.76531844313636221421e-01,1.93702156264698666099e-01,9.61522691715799737721e-01,'converged',2.24392826354756852458e-01,0.20703125,0.20703125,'null',NULL,NULL,'{"sparsity": 0.42500000000000004}',0);
INSERT INTO "at_measurements" VALUES(3,1,'row','msa_row',128,2,2,16,'float32','fwd',0.65625,3.83804499961115652695e-01,3.69120949926582397893e-01,5.14971300253819097569e-01,15,0.9296875,'rss_hwm',9.10307498998008668422e-02,8.90096001057827379554e-02,0.0936835501306632,0.05078125,1.07951000245520845055e-01,0.77734375,2.34007252099006551881e-01,2.26659482417264079856e-01,2.45513144446255049402e-01,0.96484375,'converged',2.81265592916335460671e-01,0.9296875,0.9296875,'null',NULL,NULL,'{"sparsity": 0.14375000000000004}',0);
INSERT INTO "at_measurements" VALUES(4,1,'tri','triangle',128,2,2,16,'float32','fwd',0.65625,0.38370570018742,0.374885919954977,0.392122479788668,12,0.84765625,'rss_hwm',0.0921904000279028,8.97293801608611829578e-02,9.94779599568573758006e-02,0.05078125,1.07951000245520845055e-01,0.77734375,2.37715774837251953011e-01,2.36425805780873382611e-01,2.46129937164968476404e-01,0.96142578125,'converged',2.81338015548876330118e-01,0.84765625,0.84765625,'null',NULL,NULL,'{"sparsity": 0.14375000000000004}',0);
INSERT INTO "at_measurements" VALUES(5,2,'row','msa_row',64,4,2,16,'float32','fwd',0.125,2.81615600033546797931e-01,2.51997600207687355577e-01,1.13025799983006436377e+00,41,0.61328125,'rss_hwm',5.7487600133754312992e-02,5.47975996596505865454e-02,6.38832003460265696048e-02,0.0390625,6.36940003460040315985e-02,0.28125,2.09263783600743130675e-01,1.87628489426339889467e-01,2.19378071864151730219e-01,9.72466844170412514358e-01,'max_repeats',2.26173551246509896284e-01,0.61328125,0.61328125,'null',NULL,NULL,'{"sparsity": 0.675}',0);
INSERT INTO "at_measurements" VALUES(6,2,'tri','triangle',64,2,2,16,'float32','fwd',0.125,1.83124000007713533255e-01,1.66572666583104156412e-01,6.46274000044084306892e-01,41,0.2265625,'rss_hwm',3.34097777441557941546e-02,3.13277778332121670246e-02,3.73155556493050752364e-02,0.0234375,3.88879998354241251945e-02,0.140625,1.76577439686160131415e-01,7.56990097372939874098e-02,1.85765303678922660823e-01,9.72466844170412514358e-01,'max_repeats',2.12358837911939934972e-01,0.2265625,0.2265625,'null',NULL,NULL,'{"sparsity": 0.675}',0);
INSERT INTO "at_measurements" VALUES(7,2,'row','msa_row',128,2,2,16,'float32','fwd',0.28125,4.05939875008698436431e-01,3.89006075147335650399e-01,4.96922725096737849526e-01,12,1.1328125,'rss_hwm',9.72775001173431519418e-02,0.0935895501243067,1.08235825018709874711e-01,0.05078125,1.07951000245520845055e-01,0.77734375,2.43166746521402021841e-01,2.33657959507323570447e-01,2.5102620158024457897e-01,0.96142578125,'converged',2.65928544820110801527e-01,1.1328125,1.1328125,'null',NULL,NULL,'{"sparsity": 0.51875}',0);
INSERT INTO "at_measurements" VALUES(8,2,'tri','triangle',128,2,2,16,'float32','fwd',0.28125,4.02091200157883577048e-01,3.89029600046342238783e-01,1.26364679999824147671e+00,41,1.36328125,'rss_hwm',9.27521999983582645654e-02,0.089563399887993,0.0991296001302544,0.05078125,1.07951000245520845055e-01,0.77734375,2.29642655143301899212e-01,2.13099406768467281025e-01,2.37934207990328855375e-01,9.72466844170412514358e-01,'max_repeats',2.68473918860032800814e-01,1.36328125,1.36328125,'null',NULL,NULL,'{"sparsity": 0.51875}',0);
INSERT INTO "at_measurements" VALUES(9,3,'row','msa_row',64,4,2,16,'float32','fwd',0.75,2.81058749806106789037e-01,0.259368999650178,1.33411024989982252009e+00,41,0.859375,'rss_hwm',5.79987499804701656103e-02,5.60937501177249941974e-02,6.39677500657853670418e-02,0.0390625,6.36940003460040315985e-02,0.28125,2.07969956253854060257e-01,1.94280308829850228979e-01,2.19197517210970693746e-01,9.72466844170412514358e-01,'max_repeats',2.26621659670600661407e-01,0.859375,0.859375,'null',NULL,NULL,'{"sparsity": 0.050000000000000044}',0);
INSERT INTO "at_measurements" VALUES(10,3,'tri','triangle',64,2,2,16,'float32','fwd',0.75,1.69309750162938144057e-01,1.6644995002934592776e-01,1.81270649773068726062e-01,9,0.42578125,'rss_hwm',0.0325710002471169,3.16270998155232518911e-02,3.46502497450273949652e-02,0.0234375,3.88879998354241251945e-02,0.140625,1.93377310419867221025e-01,1.85420730256310617445e-01,2.02552478173240346759e-01,0.9609375,'converged',0.22968553079784,0.42578125,0.42578125,'null',NULL,NULL,'{"sparsity": 0.050000000000000044}',0);
INSERT INTO "at_measurements" VALUES(11,3,'row','msa_row',128,2,2,16,'float32','fwd',0.875,3.83433400202193297445e-01,3.77967399981571361422e-01,4.01543559783021919429e-01,9,1.40234375,'rss_hwm',9.14262000151211395859e-02,8.97083600284531712532e-02,0.0961699600884458,0.05078125,1.07951000245520845055e-01,0.77734375,2.37948244302815248296e-01,2.3244146148906602578e-01,2.49677694286290358105e-01,0.9609375,'converged',2.81537811230309575893e-01,1.40234375,1.40234375,'null',NULL,NULL,'{"sparsity": -0.07499999999999996}',1);
INSERT INTO "at_measurements" VALUES(12,3,'tri','triangle',128,2,2,16,'float32','fwd',0.875,5.63511599830235354602e-01,3.881781998643418774e-01,1.23402659992279950529e+00,41,1.421875,'rss_hwm',0.0942224000027636,9.10055998247116804122e-02,1.06853200122714042663e-01,0.05078125,1.07951000245520845055e-01,0.77734375,1.6517636892941317539e-01,7.89919998140829193733e-02,2.25551432226906850564e-01,9.72466844170412514358e-01,'max_repeats',1.91568372821504268044e-01,1.421875,1.421875,'null',NULL,NULL,'{"sparsity": -0.07499999999999996}',1);
CREATE TABLE at_runs (
	id INTEGER NOT NULL, 
	study_name VARCHAR(256) NOT NULL, 
	started_at DATETIME NOT NULL, 
	ended_at DATETIME, 
	heartbeat_at DATETIME NOT NULL, 
	status VARCHAR(32) NOT NULL, 
	host VARCHAR(256) NOT NULL, 
	pid INTEGER NOT NULL, 
	command_line TEXT NOT NULL, 
	device VARCHAR(16) NOT NULL, 
	hardware JSON NOT NULL, 
	versions JSON NOT NULL, 
	git_revision VARCHAR(64), 
	space_path TEXT NOT NULL, 
	space JSON NOT NULL, 
	executor VARCHAR(32) NOT NULL, 
	end_reason TEXT, 
	optuna_study_id INTEGER, 
	optuna_study_uid VARCHAR(64), 
	PRIMARY KEY (id)
);
INSERT INTO "at_runs" VALUES(1,'v1','2026-11-30 15:58:18.093658','2026-11-30 15:58:20.705928','2026-11-30 15:58:19.207059','finished','vm',29575,'tests/test_optuna_views.py sparse_study(trials=3, study="v1") and export, at commit 9d3b17e','cpu','{"device": "cpu", "cpu": "AMD EPYC", "cores": 2, "host": "vm", "platform": "Linux-6.18.44-fc-v857-x86_64-with-glibc2.36", "device_name": "AMD EPYC", "driver": null, "cuda": null, "torch_threads": 2}','{"python": "3.11.7", "torch": "2.13.0+cpu", "triton": "3.8.0", "optuna": "5.0.0", "ray": "2.60.0", "sqlalchemy": "2.1.9", "numpy": "2.4.6", "pyyaml": "6.0.3", "biotite": "1.6.0"}','9d3b17ebc4fc-dirty','tiny.yaml','{"source": "tiny.yaml", "name": "tiny", "device": "cpu", "backend": "reference", "dtype": "float32", "mode": "fwd", "buckets": [64, 128], "pattern": {"block_size": {"choices": [16]}, "window": {"choices": [0, 16]}, "num_global": {"choices": [0]}, "stride": {"choices": [0, 2]}}, "kernel": null, "workloads": [{"name": "row", "kind": "msa_row", "heads": 2, "head_dim": 16, "bias": true, "tokens": 256, "max_batch": null, "msa_depth": null, "c_m": null, "c_z": null, "pair_heads": null, "c_hidden_opm": null, "c_hidden_mul": null, "max_len": null}, {"name": "tri", "kind": "triangle", "heads": 2, "head_dim": 16, "bias": true, "tokens": null, "max_batch": 2, "msa_depth": null, "c_m": null, "c_z": null, "pair_heads": null, "c_hidden_opm": null, "c_hidden_mul": null, "max_len": null}], "objectives": ["speedup", "memory_vs_sdpa"], "constraints": [{"name": "sparsity", "min": 0.8, "max": null}], "accuracy_metric": null, "accuracy_max_chains": null, "accuracy_noise": 4.0, "sampler": {"name": "random", "seed": 0}, "budget": {"trials": 3, "timeout": null}, "measure": {"warmup": 0, "repeats": 1, "max_repeats": 41, "rel_width": 0.05, "time_cap_s": 3.0, "confirm_top": 1, "confirm_repeats": 2, "confirm_max_repeats": 81, "confirm_time_cap_s": 20.0}, "gate": {"seq_len": 72, "batch": 1, "fwd_tol": null, "bwd_tol": null}, "execution": {"workers": 2, "threads_per_worker": 1}, "targets": {"bounds": [{"name": "sparsity", "min": 0.8, "max": null, "metric": null}], "memory_floor_mib": 8.0, "confidence": 0.95, "max_chains": null, "source": "constraints"}}','local',NULL,1,'0bc8d39dad9140a3b3c1916ef4c7cca2');
CREATE TABLE at_trials (
	id INTEGER NOT NULL, 
	run_id INTEGER NOT NULL, 
	study_name VARCHAR(256) NOT NULL, 
	number INTEGER NOT NULL, 
	optuna_trial_id INTEGER NOT NULL, 
	optuna_study_id INTEGER, 
	optuna_study_uid VARCHAR(64), 
	params JSON NOT NULL, 
	pattern JSON NOT NULL, 
	kernel JSON, 
	state VARCHAR(16) NOT NULL, 
	reason TEXT, 
	retry_of INTEGER, 
	objectives JSON, 
	objective_names JSON, 
	constraints JSON, 
	constraint_names JSON, 
	feasible BOOLEAN, 
	gate JSON, 
	timing JSON, 
	worker JSON, 
	started_at DATETIME NOT NULL, 
	finished_at DATETIME, 
	lease_until DATETIME, 
	PRIMARY KEY (id), 
	CONSTRAINT at_trials_study_number UNIQUE (study_name, number), 
	FOREIGN KEY(run_id) REFERENCES at_runs (id)
);
INSERT INTO "at_trials" VALUES(1,1,'v1',0,1,1,'0bc8d39dad9140a3b3c1916ef4c7cca2','{"pattern.window": 16, "pattern.stride": 0}','{"block_size": 16, "window": 16, "num_global": 0, "stride": 0, "global_placement": "first"}','null','COMPLETE',NULL,NULL,'[0.21629145961325713, 0.5073953813180182]','["speedup", "memory_vs_sdpa"]','[0.14375000000000004]','["sparsity"]',0,'{"seq_len": 72, "sparsity": 0.4444444444444444, "fwd_tol": 0.0001, "bwd_tol": 0.001, "row.fwd_err": 0.0}','{"gate_s": 0.546662025999467, "candidate_s": 0.24439123799857043, "baseline_s": 0.0029400290004559793, "accuracy_s": 1.910799983306788e-05, "timed_s": 0.23232285801168473, "total_s": 0.7954074219996983}','{"host": "vm", "pid": 29575, "trials_run": 0}','2026-11-30 15:58:18.194508','2026-11-30 15:58:19.056818',NULL);
INSERT INTO "at_trials" VALUES(2,1,'v1',1,2,1,'0bc8d39dad9140a3b3c1916ef4c7cca2','{"pattern.window": 16, "pattern.stride": 2}','{"block_size": 16, "window": 16, "num_global": 0, "stride": 2, "global_placement": "first"}','null','COMPLETE',NULL,NULL,'[0.21313094379451436, 0.6806091797940578]','["speedup", "memory_vs_sdpa"]','[0.51875]','["sparsity"]',0,'{"seq_len": 72, "sparsity": 0.14814814814814814, "fwd_tol": 0.0001, "bwd_tol": 0.001, "row.fwd_err": 0.0}','{"gate_s": 0.0017240589986613486, "candidate_s": 0.47843227699740964, "baseline_s": 5.804800093756057e-05, "accuracy_s": 1.4922001355444081e-05, "timed_s": 0.4619768880020274, "total_s": 0.4839489070000127}','{"host": "vm", "pid": 29575, "trials_run": 1}','2026-11-30 15:58:19.281872','2026-11-30 15:58:19.808125',NULL);
INSERT INTO "at_trials" VALUES(3,1,'v1',2,3,1,'0bc8d39dad9140a3b3c1916ef4c7cca2','{"pattern.window": 0, "pattern.stride": 0}','{"block_size": 16, "window": 0, "num_global": 0, "stride": 0, "global_placement": "first"}','null','COMPLETE',NULL,NULL,'[0.19939264474369964, 0.9242113282134435]','["speedup", "memory_vs_sdpa"]','[-0.07499999999999996]','["sparsity"]',1,'{"seq_len": 72, "sparsity": 0.7901234567901234, "fwd_tol": 0.0001, "bwd_tol": 0.001, "row.fwd_err": 0.0}','{"gate_s": 0.0013073579993942985, "candidate_s": 0.34733365700230934, "baseline_s": 5.2095998398726806e-05, "accuracy_s": 1.4721998013556004e-05, "timed_s": 0.3361415479939751, "total_s": 0.3498840369993559}','{"host": "vm", "pid": 29575, "trials_run": 2}','2026-11-30 15:58:20.037887','2026-11-30 15:58:20.422888',NULL);
CREATE TABLE at_tuned (
	id INTEGER NOT NULL, 
	study_name VARCHAR(256) NOT NULL, 
	bucket INTEGER NOT NULL, 
	trial_number INTEGER NOT NULL, 
	pattern JSON NOT NULL, 
	kernel JSON, 
	speedup JSON NOT NULL, 
	peak_mib JSON NOT NULL, 
	accuracy JSON, 
	hardware JSON, 
	rule TEXT NOT NULL, 
	out_path TEXT NOT NULL, 
	exported_at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "at_tuned" VALUES(1,'v1',128,2,'{"block_size": 16, "window": 0, "num_global": 0, "stride": 0, "global_placement": "first"}','null','{"row": 0.227646, "tri": 0.237456}','{"row": 1.40234, "tri": 1.42188}','{}','{"device": "cpu", "cpu": "AMD EPYC", "cores": 2, "host": "vm", "platform": "Linux-6.18.44-fc-v857-x86_64-with-glibc2.36", "device_name": "AMD EPYC", "driver": null, "cuda": null, "torch_threads": 2}','per bucket (autotune.verdict): the confirmed leader - re-measured interleaved with SDPA and the other leaders - with the highest confirmed geometric-mean speedup over the workloads whose interval clears the speedup target and that meets every other target at every workload (ties: lower geometric-mean peak memory, then the earlier trial); its speedups are re-measured once more, alone against SDPA (hold-out: free of the selection''s upward bias), and must clear the speedup target there too','v1.yaml','2026-11-30 15:58:21.279323');
CREATE TABLE studies (
	study_id INTEGER NOT NULL, 
	study_name VARCHAR(512) NOT NULL, 
	PRIMARY KEY (study_id)
);
INSERT INTO "studies" VALUES(1,'v1');
CREATE TABLE study_directions (
	study_direction_id INTEGER NOT NULL, 
	direction VARCHAR(8) NOT NULL, 
	study_id INTEGER NOT NULL, 
	objective INTEGER NOT NULL, 
	PRIMARY KEY (study_direction_id), 
	UNIQUE (study_id, objective), 
	FOREIGN KEY(study_id) REFERENCES studies (study_id)
);
INSERT INTO "study_directions" VALUES(1,'MAXIMIZE',1,0);
INSERT INTO "study_directions" VALUES(2,'MINIMIZE',1,1);
CREATE TABLE study_system_attributes (
	study_system_attribute_id INTEGER NOT NULL, 
	study_id INTEGER, 
	"key" VARCHAR(512), 
	value_json TEXT, 
	PRIMARY KEY (study_system_attribute_id), 
	UNIQUE (study_id, "key"), 
	FOREIGN KEY(study_id) REFERENCES studies (study_id)
);
INSERT INTO "study_system_attributes" VALUES(1,1,'study:metric_names','["speedup", "memory_vs_sdpa"]');
INSERT INTO "study_system_attributes" VALUES(2,1,'autotune:uid','"0bc8d39dad9140a3b3c1916ef4c7cca2"');
CREATE TABLE study_user_attributes (
	study_user_attribute_id INTEGER NOT NULL, 
	study_id INTEGER, 
	"key" VARCHAR(512), 
	value_json TEXT, 
	PRIMARY KEY (study_user_attribute_id), 
	UNIQUE (study_id, "key"), 
	FOREIGN KEY(study_id) REFERENCES studies (study_id)
);
INSERT INTO "study_user_attributes" VALUES(1,1,'space_run_id','1');
CREATE TABLE trial_heartbeats (
	trial_heartbeat_id INTEGER NOT NULL, 
	trial_id INTEGER NOT NULL, 
	heartbeat DATETIME NOT NULL, 
	PRIMARY KEY (trial_heartbeat_id), 
	UNIQUE (trial_id), 
	FOREIGN KEY(trial_id) REFERENCES trials (trial_id)
);
INSERT INTO "trial_heartbeats" VALUES(1,1,'2026-11-30 15:58:18');
INSERT INTO "trial_heartbeats" VALUES(2,2,'2026-11-30 15:58:19');
INSERT INTO "trial_heartbeats" VALUES(3,3,'2026-11-30 15:58:20');
CREATE TABLE trial_intermediate_values (
	trial_intermediate_value_id INTEGER NOT NULL, 
	trial_id INTEGER NOT NULL, 
	step INTEGER NOT NULL, 
	intermediate_value FLOAT, 
	intermediate_value_type VARCHAR(7) NOT NULL, 
	PRIMARY KEY (trial_intermediate_value_id), 
	UNIQUE (trial_id, step), 
	FOREIGN KEY(trial_id) REFERENCES trials (trial_id)
);
CREATE TABLE trial_params (
	param_id INTEGER NOT NULL, 
	trial_id INTEGER, 
	param_name VARCHAR(512), 
	param_value FLOAT, 
	distribution_json TEXT, 
	PRIMARY KEY (param_id), 
	UNIQUE (trial_id, param_name), 
	FOREIGN KEY(trial_id) REFERENCES trials (trial_id)
);
INSERT INTO "trial_params" VALUES(1,1,'pattern.window',1.0,'{"name": "CategoricalDistribution", "attributes": {"choices": [0, 16]}}');
INSERT INTO "trial_params" VALUES(2,1,'pattern.stride',0.0,'{"name": "CategoricalDistribution", "attributes": {"choices": [0, 2]}}');
INSERT INTO "trial_params" VALUES(3,2,'pattern.window',1.0,'{"name": "CategoricalDistribution", "attributes": {"choices": [0, 16]}}');
INSERT INTO "trial_params" VALUES(4,2,'pattern.stride',1.0,'{"name": "CategoricalDistribution", "attributes": {"choices": [0, 2]}}');
INSERT INTO "trial_params" VALUES(5,3,'pattern.window',0.0,'{"name": "CategoricalDistribution", "attributes": {"choices": [0, 16]}}');
INSERT INTO "trial_params" VALUES(6,3,'pattern.stride',0.0,'{"name": "CategoricalDistribution", "attributes": {"choices": [0, 2]}}');
INSERT INTO "trial_params" VALUES(7,4,'pattern.window',1.0,'{"name": "CategoricalDistribution", "attributes": {"choices": [0, 16]}}');
INSERT INTO "trial_params" VALUES(8,4,'pattern.stride',1.0,'{"name": "CategoricalDistribution", "attributes": {"choices": [0, 2]}}');
CREATE TABLE trial_system_attributes (
	trial_system_attribute_id INTEGER NOT NULL, 
	trial_id INTEGER, 
	"key" VARCHAR(512), 
	value_json TEXT, 
	PRIMARY KEY (trial_system_attribute_id), 
	UNIQUE (trial_id, "key"), 
	FOREIGN KEY(trial_id) REFERENCES trials (trial_id)
);
INSERT INTO "trial_system_attributes" VALUES(1,1,'constraints','[0.14375000000000004]');
INSERT INTO "trial_system_attributes" VALUES(2,2,'constraints','[0.51875]');
INSERT INTO "trial_system_attributes" VALUES(3,3,'constraints','[-0.07499999999999996]');
CREATE TABLE trial_user_attributes (
	trial_user_attribute_id INTEGER NOT NULL, 
	trial_id INTEGER, 
	"key" VARCHAR(512), 
	value_json TEXT, 
	PRIMARY KEY (trial_user_attribute_id), 
	UNIQUE (trial_id, "key"), 
	FOREIGN KEY(trial_id) REFERENCES trials (trial_id)
);
INSERT INTO "trial_user_attributes" VALUES(1,1,'constraints','[0.14375000000000004]');
INSERT INTO "trial_user_attributes" VALUES(2,1,'constraint_names','["sparsity"]');
INSERT INTO "trial_user_attributes" VALUES(3,1,'buckets','{"64": {"feasible": false, "meets_speedup": true, "speedup": 0.1983513146129735, "speedup_lo": 0.1887987366496349, "memory_vs_sdpa": 0.2900111123948529, "memory_vs_naive": 0.2900111123948529, "sparsity": 0.375, "workloads": ["row", "tri"], "violations": {"sparsity": 0.42500000000000004}}, "128": {"feasible": false, "meets_speedup": true, "speedup": 0.23585422457579916, "speedup_lo": 0.23149114619867725, "memory_vs_sdpa": 0.8877248559784022, "memory_vs_naive": 0.8877248559784022, "sparsity": 0.65625, "workloads": ["row", "tri"], "violations": {"sparsity": 0.14375000000000004}}}');
INSERT INTO "trial_user_attributes" VALUES(4,1,'feasible_buckets','[]');
INSERT INTO "trial_user_attributes" VALUES(5,1,'constraint_bucket','128');
INSERT INTO "trial_user_attributes" VALUES(6,2,'constraints','[0.51875]');
INSERT INTO "trial_user_attributes" VALUES(7,2,'constraint_names','["sparsity"]');
INSERT INTO "trial_user_attributes" VALUES(8,2,'buckets','{"64": {"feasible": false, "meets_speedup": true, "speedup": 0.19222711340302098, "speedup_lo": 0.119177560170018, "memory_vs_sdpa": 0.37275532619014984, "memory_vs_naive": 0.37275532619014984, "sparsity": 0.125, "workloads": ["row", "tri"], "violations": {"sparsity": 0.675}}, "128": {"feasible": false, "meets_speedup": true, "speedup": 0.2363079713292233, "speedup_lo": 0.22314204569677407, "memory_vs_sdpa": 1.2427155913625711, "memory_vs_naive": 1.2427155913625711, "sparsity": 0.28125, "workloads": ["row", "tri"], "violations": {"sparsity": 0.51875}}}');
INSERT INTO "trial_user_attributes" VALUES(9,2,'feasible_buckets','[]');
INSERT INTO "trial_user_attributes" VALUES(10,2,'constraint_bucket','128');
INSERT INTO "trial_user_attributes" VALUES(11,3,'constraints','[-0.07499999999999996]');
INSERT INTO "trial_user_attributes" VALUES(12,3,'constraint_names','["sparsity"]');
INSERT INTO "trial_user_attributes" VALUES(13,3,'buckets','{"64": {"feasible": false, "meets_speedup": true, "speedup": 0.20054094541641052, "speedup_lo": 0.1897988322873784, "memory_vs_sdpa": 0.6049014479390424, "memory_vs_naive": 0.6049014479390424, "sparsity": 0.75, "workloads": ["row", "tri"], "violations": {"sparsity": 0.050000000000000044}}, "128": {"feasible": true, "meets_speedup": true, "speedup": 0.19825091925907415, "speedup_lo": 0.1355028261060612, "memory_vs_sdpa": 1.412075606874947, "memory_vs_naive": 1.412075606874947, "sparsity": 0.875, "workloads": ["row", "tri"], "violations": {"sparsity": -0.07499999999999996}}}');
INSERT INTO "trial_user_attributes" VALUES(14,3,'feasible_buckets','[128]');
INSERT INTO "trial_user_attributes" VALUES(15,3,'constraint_bucket','128');
INSERT INTO "trial_user_attributes" VALUES(16,4,'not_run','"budget reached"');
CREATE TABLE trial_values (
	trial_value_id INTEGER NOT NULL, 
	trial_id INTEGER NOT NULL, 
	objective INTEGER NOT NULL, 
	value FLOAT, 
	value_type VARCHAR(7) NOT NULL, 
	PRIMARY KEY (trial_value_id), 
	UNIQUE (trial_id, objective), 
	FOREIGN KEY(trial_id) REFERENCES trials (trial_id)
);
INSERT INTO "trial_values" VALUES(1,1,0,2.16291459613257130989e-01,'FINITE');
INSERT INTO "trial_values" VALUES(2,1,1,5.07395381318018201532e-01,'FINITE');
INSERT INTO "trial_values" VALUES(3,2,0,2.13130943794514360334e-01,'FINITE');
INSERT INTO "trial_values" VALUES(4,2,1,6.80609179794057772561e-01,'FINITE');
INSERT INTO "trial_values" VALUES(5,3,0,1.99392644743699637421e-01,'FINITE');
INSERT INTO "trial_values" VALUES(6,3,1,9.24211328213443539247e-01,'FINITE');
CREATE TABLE trials (
	trial_id INTEGER NOT NULL, 
	number INTEGER, 
	study_id INTEGER, 
	state VARCHAR(8) NOT NULL, 
	datetime_start DATETIME, 
	datetime_complete DATETIME, 
	PRIMARY KEY (trial_id), 
	FOREIGN KEY(study_id) REFERENCES studies (study_id)
);
INSERT INTO "trials" VALUES(1,0,1,'COMPLETE','2026-11-30 15:58:18.139294','2026-11-30 15:58:19.180552');
INSERT INTO "trials" VALUES(2,1,1,'COMPLETE','2026-11-30 15:58:19.226537','2026-11-30 15:58:19.957141');
INSERT INTO "trials" VALUES(3,2,1,'COMPLETE','2026-11-30 15:58:19.980430','2026-11-30 15:58:20.556799');
INSERT INTO "trials" VALUES(4,3,1,'PRUNED','2026-11-30 15:58:20.586355','2026-11-30 15:58:20.676115');
CREATE TABLE version_info (
	version_info_id INTEGER NOT NULL, 
	schema_version INTEGER, 
	library_version VARCHAR(256), 
	PRIMARY KEY (version_info_id), 
	CHECK (version_info_id=1)
);
INSERT INTO "version_info" VALUES(1,12,'5.0.0');
CREATE INDEX ix_at_runs_study_name ON at_runs (study_name);
CREATE INDEX ix_at_tuned_study_name ON at_tuned (study_name);
CREATE INDEX ix_at_confirmations_confirm_id ON at_confirmations (confirm_id);
CREATE INDEX ix_at_confirmations_study_name ON at_confirmations (study_name);
CREATE INDEX ix_at_trials_study_name ON at_trials (study_name);
CREATE INDEX ix_at_trials_run_id ON at_trials (run_id);
CREATE INDEX ix_at_measurements_trial_id ON at_measurements (trial_id);
CREATE INDEX ix_at_measurements_bucket ON at_measurements (bucket);
CREATE UNIQUE INDEX ix_studies_study_name ON studies (study_name);
CREATE INDEX ix_trials_study_id ON trials (study_id);
COMMIT;
